"""libvirt driver: real virtual machines under QEMU/KVM through libvirt-python.

Each machine is a domain with a deterministic name and devenv metadata in its XML (project,
machine, SSH endpoint, forwarded ports), so it is found without .devenv/. Its disk is a qcow2
overlay on the box (the box is never written); its identity (client key, host key) is made by
devenv and delivered by a NoCloud seed, and SSH runs with that host key pinned.

Networking is QEMU user mode with host forwards bound to 127.0.0.1 (ENGINES.md: passt is not
available in Debian 12's libvirt). Domain type is `kvm` only when the CPU really offers
vmx/svm and /dev/kvm exists — libvirt's own capability report is not trusted for this.

The driver never builds a box: devenv.boxes.builders does (a build VM is a contract.BuildTarget
machine on a fresh disk, stored with ``package``); prepare_box only looks a box up in the store.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from xml.sax.saxutils import escape, quoteattr

from devenv.boxes import store
from devenv.boxes.disks import qcow2_backing
from devenv.contract import (
    QUIET,
    BoxArtifact,
    BuildTarget,
    Features,
    HostEndpoint,
    MachineState,
    Ownership,
    Reporter,
    Target,
    safe_handle,
)
from devenv.drivers.hostports import check_host_addresses, free_port, plan_forwards, port_free, ssh_banner
from devenv.drivers.libvirt import networks as nets
from devenv.drivers.vm.common import VmMetadataMixin
from devenv.errors import (
    BackendUnavailable,
    BoxError,
    MachineStateError,
    PortConflict,
    UnsupportedOperation,
    UsageError,
)
from devenv.model.recipe import check_origin, find_recipe, parse_ref
from devenv.model.schema import USER_NAME_HELP, USER_NAME_PATTERN, Bool, Custom, Field, Int, Problem, Str, Table

DEFAULT_URI = "qemu:///system"
NS = "https://devenv.invalid/xmlns/libvirt/1"  # metadata namespace: an identifier, never fetched
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


# A Devfile comes with a repository, and libvirt acts on its URI at the first connect: `qemu+ext`
# runs the program its `command=` names, `qemu+ssh` takes `command=`/`netcat=`/`keyfile=`,
# `socket=` points at any socket, `qemu:///embed?root=` runs QEMU in this process, `test:///FILE`
# reads a host file. So a Devfile's `uri` is limited to the local or network daemons with no
# parameter that names a program, a file or a socket. Any other URI is the host user's choice,
# never the repository's: they set DEVENV_LIBVIRT_URI in their own environment (not checked).
URI_SCHEMES = ("qemu", "qemu+unix", "qemu+ssh", "qemu+tls", "qemu+tcp", "test")
URI_PARAMS = {"no_tty": ("0", "1"), "mode": ("auto", "direct", "legacy")}
_URI_HOST = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\]"
)
URI_HINT = (
    "a Devfile's uri may be qemu:///system, qemu:///session, qemu+unix, or qemu+ssh/tls/tcp://[USER@]HOST[:PORT]/system"
    f" with only the parameters {', '.join(sorted(URI_PARAMS))}; for any other URI set DEVENV_LIBVIRT_URI in your own"
    " environment and leave uri out of the Devfile"
)


def uri_problem(uri: str) -> str | None:
    """Why a Devfile may not name this libvirt URI, or None when it may (see URI_SCHEMES)."""
    from urllib.parse import parse_qsl, urlsplit

    if not uri.isprintable() or any(c.isspace() for c in uri) or "#" in uri:
        return "holds a space, a control character or '#'"
    scheme, sep, _rest = uri.partition("://")
    if not sep:
        return "is not a URI (expected SCHEME:///PATH)"
    if scheme not in URI_SCHEMES:
        if scheme.endswith("+ext"):
            return f"the '{scheme}' transport runs a program on this host"
        return f"the scheme '{scheme}' is not one of: {', '.join(URI_SCHEMES)}"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URI ({exc})"
    if scheme == "test":
        return None if uri == "test:///default" else "a test URI may only be test:///default"
    if parts.path not in ("/system", "/session"):
        return f"the path '{parts.path}' is not /system or /session"
    if scheme in ("qemu", "qemu+unix"):
        if parts.netloc:
            return f"a {scheme} URI names no host (qemu:///system)"
    else:
        host = parts.netloc.rpartition("@")[2]
        if port is not None or host.endswith(":"):
            host = host.rpartition(":")[0]
        if not host or not _URI_HOST.fullmatch(host):
            return "needs a host name or address (qemu+ssh://HOST/system)"
        if parts.password is not None:
            return "holds a password"
        if parts.username is not None and not re.fullmatch(USER_NAME_PATTERN, parts.username):
            return f"the user is not {USER_NAME_HELP}"
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in URI_PARAMS:
            return f"the parameter '{key}' is not one a Devfile may set ({', '.join(sorted(URI_PARAMS))})"
        if value not in URI_PARAMS[key]:
            return f"the parameter {key}={value} is not one of {', '.join(URI_PARAMS[key])}"
    return None


def _check_uri(value: Any, path: tuple, problems: list) -> Any:
    if not isinstance(value, str) or not value:
        problems.append(Problem(path, "expected a libvirt URI string, e.g. qemu:///system"))
        return None
    why = uri_problem(value)
    if why is not None:
        shown = value if value.isprintable() else value.encode("unicode_escape", "backslashreplace").decode()
        problems.append(Problem(path, f"libvirt URI '{shown}' is refused: {why}; {URI_HINT}"))  # one line
        return None
    return value


_OPTIONS = Table(
    {
        "uri": Field(
            Custom(
                _check_uri,
                {"type": "string", "pattern": "^(qemu|qemu\\+unix|qemu\\+ssh|qemu\\+tls|qemu\\+tcp|test)://"},
                description="libvirt URI (default qemu:///system; qemu:///session for non-root): a local or "
                "qemu+ssh/tls/tcp daemon, no parameter naming a program, file or socket",
            )
        ),
        "domain_type": Field(Str(choices=("auto", "kvm", "qemu")), default="auto"),
        "machine_type": Field(
            Str(
                pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
                pattern_help="a QEMU machine type name (letters, digits, . _ -)",
                description="QEMU machine type, e.g. pc or q35",
            ),
            default="pc",
        ),
        "boot_timeout": Field(Int(minimum=5, maximum=3600, description="Seconds to wait for SSH"), default=180),
        "halt_timeout": Field(Int(minimum=1, maximum=600, description="Seconds to wait for ACPI shutdown"), default=60),
        "isolated": Field(Bool(description="No outbound network from the guest"), default=False),
        "ssh_user": Field(
            Str(pattern=USER_NAME_PATTERN, pattern_help=USER_NAME_HELP, description="Login user (default: the box's)")
        ),
    },
    description="Options for the libvirt driver",
)


def hardware_virt_usable() -> bool:
    """vmx/svm in /proc/cpuinfo and a usable /dev/kvm (libvirt may advertise kvm regardless)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M)) and os.access("/dev/kvm", os.R_OK | os.W_OK)


def virtiofsd_path() -> str | None:
    for p in ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd"):
        if os.access(p, os.X_OK):
            return p
    return shutil.which("virtiofsd")


MOUNT_OPTIONS = {"9p": "trans=virtio,version=9p2000.L,msize=262144", "virtiofs": "defaults"}


def split_handle(handle: str) -> tuple[str, str]:
    uri, _, name = handle.rpartition("#")
    return uri or DEFAULT_URI, name


class LibvirtDriver(VmMetadataMixin):
    gone_message = "the domain is gone"

    name: ClassVar[str] = "libvirt"
    features: ClassVar[Features] = Features(
        snapshots=True,
        suspend=True,
        apply_settings=True,
        package=True,
        copy_sync=True,
        networks=True,
        host_access=True,
        env_at_create=False,
    )
    reporter: Reporter = QUIET  # set by the core before use
    options: ClassVar[Table] = _OPTIONS

    def __init__(self) -> None:
        self._conns: dict[str, Any] = {}

    # -- engine access -----------------------------------------------------------------------
    def _lib(self) -> Any:
        try:
            import libvirt
        except ImportError as exc:
            raise BackendUnavailable(
                "the libvirt driver needs libvirt-python, which is not installed",
                hint="pip install 'devenv[libvirt]' (it builds against libvirt's headers: "
                "apt-get install libvirt-dev pkg-config gcc first)",
            ) from exc
        # libvirt prints every error to stderr by default; devenv reports them itself.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        return libvirt

    def default_uri(self) -> str:
        return os.environ.get("DEVENV_LIBVIRT_URI") or DEFAULT_URI

    def conn(self, uri: str | None = None) -> Any:
        uri = uri or self.default_uri()
        c = self._conns.get(uri)
        if c is not None:
            try:
                if c.isAlive():
                    return c
            except Exception:  # noqa: BLE001 - a dead connection is replaced below
                pass
        lib = self._lib()
        try:
            c = lib.open(uri)
        except lib.libvirtError as exc:
            raise self._unavailable(uri, exc) from exc
        if not self._conns:
            # Closed before the interpreter tears modules down: a connection finalised after
            # libvirt's module is gone prints "Exception ignored in virConnect.__del__".
            import atexit

            atexit.register(self._close_all)
        self._conns[uri] = c
        return c

    def _close_all(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for c in conns:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - leaving anyway; a dead connection has nothing to close
                pass

    def _unavailable(self, uri: str, exc: Exception) -> BackendUnavailable:
        text = str(exc)
        if "No such file or directory" in text and "sock" in text:
            return BackendUnavailable(
                f"libvirtd is not running (no socket for {uri})",
                hint="start it: `sudo systemctl start libvirtd`, or without systemd "
                "`setsid virtlogd -d; setsid libvirtd -d`; scripts/libvirt.sh installs and starts it",
            )
        if "Permission denied" in text or "authentication" in text.lower():
            return BackendUnavailable(
                f"permission denied on {uri}",
                hint="add your user to the 'libvirt' group (then log in again), or use uri = \"qemu:///session\"",
            )
        return BackendUnavailable(
            f"cannot reach libvirt at {uri}: {text.splitlines()[0] if text else exc}",
            hint="check the URI and that libvirtd runs there (`virsh -c URI version`)",
        )

    def check_available(self, machine=None) -> None:
        """The libvirt the machine names (`uri`, e.g. qemu:///session), else the default one."""
        self.conn(self._uri_for(machine) if machine is not None else None)

    def describe_engine(self, machine=None) -> str:
        conn = self.conn(self._uri_for(machine) if machine is not None else None)
        v = conn.getLibVersion()
        return f"libvirt {v // 1000000}.{v // 1000 % 1000} at {conn.getURI()}"

    def _uri_for(self, machine) -> str:
        return machine.driver_options().get("uri") or self.default_uri()

    def _check_same_host(self, uri: str) -> None:
        """Refuse a libvirt host that is another machine, before anything is made.

        The disk overlay, seed and kernel are files devenv makes on this machine, and SSH reaches
        the VM through a port forward on the libvirt host's 127.0.0.1: with qemu+ssh:// to
        another machine both would fail only after a long boot wait."""
        remote = self.conn(uri).getHostname()
        if remote in (socket.gethostname(), socket.getfqdn()):
            return
        raise UnsupportedOperation(
            f"{uri} is libvirt on another machine ({remote}); devenv's libvirt machines run on the host "
            "devenv runs on (their disks are made here and SSH goes through the host's loopback)",
            hint=f"run devenv on {remote} itself (ssh there, then `devenv up`), or use a container on a "
            "remote Docker engine (DOCKER_HOST=ssh://...)",
        )

    def _dom(self, handle: str) -> Any | None:
        uri, name = split_handle(handle)
        lib = self._lib()
        try:
            return self.conn(uri).lookupByName(name)
        except lib.libvirtError as exc:
            if exc.get_error_code() == lib.VIR_ERR_NO_DOMAIN:
                return None
            raise BackendUnavailable(f"libvirt error: {exc}") from exc

    # -- validation ----------------------------------------------------------------------------
    def validate(self, machine) -> list[Problem]:
        problems: list[Problem] = []
        if machine.box:
            ref = parse_ref(machine.box)
            if ref.kind == "image":
                problems.append(Problem(("box",), "the libvirt driver boots VM boxes, not Docker images"))
        for i, s in enumerate(machine.sync):
            if s.type in ("bind", "vboxsf"):
                problems.append(
                    Problem(
                        ("sync", i, "type"),
                        f"the libvirt driver cannot sync with '{s.type}' (use auto, 9p, virtiofs or rsync)",
                    )
                )
            elif s.type == "virtiofs" and s.read_only:
                # libvirt 9 refuses <readonly/> for virtiofs and QEMU 7.2's virtiofsd has no read-only
                # mode: only the guest's mount options would hold it, and guest root can remount.
                problems.append(
                    Problem(
                        ("sync", i, "read_only"),
                        "read_only = true cannot be enforced on a virtiofs share (only the guest's mount "
                        "options would hold it, and root in the guest can remount it read-write): use "
                        'type = "9p" (QEMU refuses every write on the host side) or "rsync" (a copy)',
                    )
                )
        return problems

    def preflight(self, target: Target) -> None:
        check_host_addresses(target)  # QEMU's forwards bind on this host
        uri = self._uri_for(target.machine)
        if target.machine.networks and uri.split("?")[0].endswith("/session"):
            names = ", ".join(a.name for a in target.machine.networks)
            raise UnsupportedOperation(
                f"machine '{target.name}' joins the private network(s) {names}, and a session libvirt ({uri}) "
                "cannot make networks: a bridge with DHCP and DNS on it needs the system daemon",
                hint="use qemu:///system for this machine (as root or in the 'libvirt' group), or the docker "
                "driver; a single machine needs no network (leave `networks` out)",
            )

    # -- boxes ---------------------------------------------------------------------------------
    def prepare_box(self, target: Target, box: str) -> BoxArtifact:
        """The stored libvirt box the machine names; a recipe's box must be built already
        (devenv.boxes.builders.ensure_built, which `up` runs first)."""
        ref = parse_ref(box)
        if ref.kind == "registry":
            return self._artifact_of(self._pulled(ref.name, target.name))
        if ref.kind != "recipe":
            raise BoxError(
                f"the libvirt driver cannot use box '{box}' yet",
                hint="use a box from the box store (`devenv box list`) or a recipe with a libvirt output",
            )
        try:
            recipe = find_recipe(ref, target.project_root, warn=self.reporter.warn)
        except BoxError:
            recipe = None  # no recipe here (a box added or packaged): the store's newest, as named
        # With a recipe, its own version (never whatever version is newest in the shared store: a
        # repository's recipe of the same name may have put a higher one there), built by it.
        version = ref.version or (recipe.version if recipe is not None else None)
        stored = store.find_stored(ref.name, version, "libvirt")
        if stored is not None and recipe is not None:
            check_origin(stored.meta.get("origin"), recipe, f"box {stored.name}@{stored.version} (libvirt)")
        if stored is None:
            if recipe is None or "libvirt" not in recipe.outputs:
                raise BoxError(
                    f"no libvirt box named {box} in the box store ({store.store_root()})",
                    hint="build it with `devenv box build NAME` from a recipe with a libvirt output, "
                    "or add one with `devenv box add`",
                )
            raise BoxError(
                f"box {recipe.name}@{recipe.version} (libvirt) is not built: it is not in the box store "
                f"({store.store_root()})",
                hint=f"build it: `devenv box build {recipe.name} --output libvirt` "
                "(`devenv up` builds a missing box itself)",
            )
        return self._artifact_of(stored)

    def _pulled(self, text: str, machine: str) -> store.StoredBox:
        """The box artifact an oci:// reference names: the stored one pulled by that manifest
        digest (no registry needed), else pulled now, every byte checked (devenv.boxes.oci)."""
        from devenv.boxes import oci

        ref = oci.parse_ref(text)
        digest = ref.digest
        if digest is not None:
            found = oci.find_pulled(digest)
            if found is not None:
                return found
        else:
            reg = oci.Registry(ref.host)
            reg.ping()
            digest = reg.manifest(ref)[1]  # the tag now: the digest decides from here on
            found = oci.find_pulled(digest)
            if found is not None:
                return found
        with self.reporter.progress(machine, f"pulling box {ref}") as note:
            stored = oci.fetch_box(ref._replace(digest=digest), progress=note.files())
        self.reporter.info(machine, f"box {stored.name}@{stored.version} pulled from {ref}")
        return stored

    def _artifact_of(self, stored: store.StoredBox) -> BoxArtifact:
        disk = stored.file("disk")
        if disk is None or not disk.is_file():
            raise BoxError(
                f"box {stored.name}@{stored.version} (libvirt) is incomplete: no disk in {stored.folder}",
                hint=f"remove it (`devenv box remove {stored.name}@{stored.version}`) and build it again",
            )
        kernel = stored.file("kernel")
        if kernel is None and not stored.meta.get("bootloader"):
            raise BoxError(
                f"box {stored.name}@{stored.version} has neither a kernel for direct boot nor a bootloader",
                hint="rebuild the box with a kernel (direct kernel boot) or a bootable disk",
            )
        return BoxArtifact(
            name=stored.name,
            version=stored.version,
            ref=str(disk),
            digest="sha256:" + (stored.digest() or ""),
            extra={
                "kernel": str(kernel) if kernel else None,
                "initrd": str(stored.file("initrd")) if stored.file("initrd") else None,
                "cmdline": stored.meta.get("cmdline", ""),
                "ssh_user": stored.meta.get("ssh_user", "root"),
                "sync": stored.meta.get("sync", ["9p", "rsync"]),
                "baked": stored.meta.get("baked", []),
                # Where a team box came from (Devfile.lock pins it: the core refuses another digest).
                "pulled_from": (stored.meta.get("source") or {}).get("registry")
                or (stored.meta.get("source") or {}).get("catalog"),
            },
        )

    # -- storage -------------------------------------------------------------------------------
    def storage_dir(self, domain: str) -> Path:
        from devenv.state import data_dir

        return data_dir() / "libvirt" / domain

    # -- lifecycle -----------------------------------------------------------------------------
    def _domain_type(self, machine, uri: str) -> str:
        wanted = machine.driver_options().get("domain_type", "auto")
        if wanted != "auto":
            return wanted
        local = uri.startswith(("qemu:///", "qemu+unix:///"))
        return "kvm" if local and hardware_virt_usable() else "qemu"

    def _forwards(self, target: Target) -> list[dict]:
        return plan_forwards(target, self.reporter)

    def _sync_plan(self, target: Target, box: BoxArtifact) -> list[dict]:
        plan = []
        supported = box.extra.get("sync", ["9p", "rsync"])
        for i, s in enumerate(target.machine.sync):
            kind = s.type
            if kind == "auto":
                # A read-only share must be read-only on the host side: virtiofs cannot be (see validate).
                if "virtiofs" in supported and virtiofsd_path() and not s.read_only:
                    kind = "virtiofs"
                elif "9p" in supported:
                    kind = "9p"
                else:
                    kind = "rsync"
            if kind == "virtiofs" and s.read_only:  # validate refuses it; never reach the XML regardless
                raise UsageError(
                    f"machine '{target.name}': sync[{i}] is read_only, which virtiofs cannot enforce",
                    hint='use type = "9p" or "rsync"',
                )
            if kind == "virtiofs" and not virtiofsd_path():
                raise BackendUnavailable(
                    "virtiofs needs virtiofsd on the host, which is not installed",
                    hint='apt-get install qemu-system-x86 (it ships /usr/lib/qemu/virtiofsd) or use type = "rsync"',
                )
            plan.append(
                {"tag": f"sync{i}", "host": str(s.host), "guest": s.guest, "kind": kind, "read_only": s.read_only}
            )
        return plan

    def create(self, target: Target, box: BoxArtifact, *, env: dict[str, str] | None = None) -> str:
        m = target.machine
        uri = self._uri_for(m)
        handle = f"{uri}#{target.resource_name}"
        owner = self.owns(handle, target)
        if owner is Ownership.OURS:
            return handle
        if owner is Ownership.FOREIGN:
            # Its name is ours but it carries no devenv metadata for this machine: never adopt it.
            raise MachineStateError(
                f"a libvirt domain named {target.resource_name} exists on {uri} but is not devenv's machine "
                f"'{m.name}' of this project",
                hint=f"remove or rename it (`virsh -c {uri} undefine {target.resource_name}`) if it is not needed",
            )
        self._check_same_host(uri)
        folder = self.storage_dir(target.resource_name)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        overlay = folder / "disk.qcow2"
        # Checked again at use (a box stored by an older devenv was not): qemu-img create and QEMU
        # open whatever the box's disk names -- a backing or data file anywhere on this host.
        from devenv.boxes import diskcheck

        diskcheck.inspect(Path(box.ref), ("qcow2",), f"box {box.name}@{box.version}: {box.ref}")
        if not overlay.exists():
            r = subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", box.ref, str(overlay)],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                raise BoxError(
                    f"cannot create the disk overlay for '{m.name}': {r.stderr.strip()}",
                    hint="is qemu-utils installed? (apt-get install qemu-utils)",
                )
        self._define(target, box, handle, ssh_port=free_port("127.0.0.1"), new_machine=True)
        return handle

    def _define(
        self, target: Target, box: BoxArtifact, handle: str, *, ssh_port: int, new_machine: bool = False
    ) -> None:
        """Write the seed and (re)define the domain; the disk and the machine's keys are kept."""
        from devenv.drivers.vm import identity, seed
        from devenv.state import ProjectState

        m = target.machine
        uri, name = split_handle(handle)
        folder = self.storage_dir(name)
        keys = identity.ensure_keys(
            ProjectState(target.project_root).ensure_machine_dir(m.name),
            f"{target.project_id}/{m.name}",
            fresh=new_machine,
        )
        keys.pin("127.0.0.1", ssh_port)
        forwards = self._forwards(target)
        sync = self._sync_plan(target, box)
        ssh_user = m.driver_options().get("ssh_user") or box.extra.get("ssh_user", "root")
        joined = self._join_networks(target, uri)
        mounts = [
            (s["tag"], s["guest"], s["kind"], MOUNT_OPTIONS[s["kind"]] + (",ro" if s["read_only"] else ""))
            for s in sync
            if s["kind"] in MOUNT_OPTIONS
        ]
        seed.write_iso(
            folder / "seed.iso",
            {
                "meta-data": seed.meta_data(f"{name}-{int(time.time())}", m.hostname),
                "user-data": seed.user_data(
                    hostname=m.hostname,
                    authorized_key=keys.client_pub,
                    host_key_private=keys.host_private,
                    host_key_public=keys.host_pub,
                    mounts=mounts,
                    nameservers=nets.nameservers(joined) if joined else (),
                ),
            },
        )
        xml = self.domain_xml(
            target=target,
            box=box,
            name=name,
            uri=uri,
            folder=folder,
            ssh_port=ssh_port,
            ssh_user=ssh_user,
            keys_dir=keys.folder,
            forwards=forwards,
            sync=sync,
            joined=joined,
        )
        existing = self._dom(handle)
        if existing is not None:
            # Redefining keeps the domain (and its snapshots) only under the same UUID.
            xml = xml.replace(
                f"  <name>{escape(name)}</name>",
                f"  <name>{escape(name)}</name>\n  <uuid>{existing.UUIDString()}</uuid>",
                1,
            )
        lib = self._lib()
        try:
            self.conn(uri).defineXML(xml)
        except lib.libvirtError as exc:
            raise BoxError(f"libvirt refused the domain for '{m.name}': {exc}") from exc

    def _join_networks(self, target: Target, uri: str) -> list[nets.Joined]:
        """The machine's place on each project network it joins (made when missing), and its
        reservations taken off the project networks it no longer joins."""
        if not target.machine.networks and isinstance(target, BuildTarget):
            return []
        conn = self.conn(uri)
        keep = {a.name for a in target.machine.networks}
        nets.release(conn, target.project_id, str(target.project_root), target.resource_name, keep=keep)
        return [nets.ensure(conn, target, att, uri) for att in target.machine.networks]

    def host_endpoint(self, handle: str) -> HostEndpoint:
        """User-mode networking (the first NIC) takes 10.0.2.2 to the host's 127.0.0.1: the
        host's service listens on loopback only, reachable from this host's VMs and nothing else."""
        return HostEndpoint("127.0.0.1", "10.0.2.2")

    def addresses(self, handle: str) -> dict[str, str]:
        return {n["name"]: n["ip"] for n in (self.metadata(handle) or {}).get("nets", []) if n.get("ip")}

    def apply_settings(self, handle: str, target: Target, box: BoxArtifact) -> bool:
        """Apply changed cpus/memory/ports/hostname/sync in place: stop, redefine, keep the disk."""
        meta = self.metadata(handle) or {}
        self.stop(handle)
        port = int(meta.get("ssh", {}).get("port") or free_port("127.0.0.1"))
        if not port_free("127.0.0.1", port, "tcp"):
            port = free_port("127.0.0.1")
        self._define(target, box, handle, ssh_port=port)
        return True

    @staticmethod
    def _backing_xml(folder: Path, box: BoxArtifact) -> str:
        """The overlay's whole backing chain, spelled out: the box's disk, then nothing.

        libvirt (with -blockdev, libvirt >= 5.10) opens the chain the XML gives instead of probing
        image headers; the empty <backingStore/> ends it, so QEMU opens no file the box disk's
        header might name. The backing is the one the overlay records (devenv wrote it), else the box's.
        """
        backing = qcow2_backing(folder / "disk.qcow2") or box.ref
        return (
            f"<backingStore type='file'><format type='qcow2'/><source file={quoteattr(backing)}/>"
            "<backingStore/></backingStore>"
        )

    def domain_xml(
        self,
        *,
        target: Target,
        box: BoxArtifact,
        name: str,
        uri: str,
        folder: Path,
        ssh_port: int,
        ssh_user: str,
        keys_dir: Path,
        forwards: list[dict],
        sync: list[dict],
        joined: list[nets.Joined] = (),
    ) -> str:
        m = target.machine
        opts = m.driver_options()
        dtype = self._domain_type(m, uri)
        memory_mib = (m.memory or 512 * 1024**2) // 1024**2
        vcpus = max(1, int(m.cpus or 1))
        q = quoteattr
        meta = [
            f"<devenv:machine xmlns:devenv={q(NS)} project={q(target.project_id)} machine={q(m.name)} "
            f"root={q(str(target.project_root))}>",
            f"<devenv:ssh host='127.0.0.1' port='{ssh_port}' user={q(ssh_user)} keys={q(str(keys_dir))} "
            f"boot_timeout='{opts.get('boot_timeout', 180)}' halt_timeout='{opts.get('halt_timeout', 60)}'/>",
            *[
                f"<devenv:port host_ip={q(f['host_ip'])} host='{f['host']}' guest='{f['guest']}' "
                f"protocol={q(f['protocol'])}/>"
                for f in forwards
            ],
            *[
                f"<devenv:sync tag={q(s['tag'])} host={q(s['host'])} guest={q(s['guest'])} kind={q(s['kind'])} "
                f"read_only='{int(s['read_only'])}'/>"
                for s in sync
            ],
            f"<devenv:box name={q(box.name)} version={q(box.version or '')} digest={q(box.digest or '')}/>",
            *nets.metadata_xml(list(joined)),
            "</devenv:machine>",
        ]
        kernel = box.extra.get("kernel")
        if kernel:
            os_xml = [f"<kernel>{escape(kernel)}</kernel>"]
            if box.extra.get("initrd"):
                os_xml.append(f"<initrd>{escape(box.extra['initrd'])}</initrd>")
            os_xml.append(f"<cmdline>{escape(box.extra.get('cmdline') or 'console=ttyS0')}</cmdline>")
        else:
            os_xml = ["<boot dev='hd'/>"]
        fwd = ",".join(
            [f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22"]
            + [f"hostfwd={f['protocol']}:{f['host_ip']}:{f['host']}-:{f['guest']}" for f in forwards]
        )
        netdev = f"user,id=devnet0{',restrict=on' if opts.get('isolated') else ''},{fwd}"
        fs = []
        for s in sync:
            ro = "<readonly/>" if s["read_only"] else ""
            if s["kind"] == "9p":
                # <readonly/> becomes QEMU's -fsdev readonly=on: the host refuses every write (EROFS),
                # whatever the guest mounts.
                fs.append(
                    f"<filesystem type='mount' accessmode='passthrough'><source dir={q(s['host'])}/>"
                    f"<target dir={q(s['tag'])}/>{ro}</filesystem>"
                )
            elif s["kind"] == "virtiofs":
                fs.append(
                    f"<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>"
                    f"<binary path={q(virtiofsd_path() or '')}/><source dir={q(s['host'])}/>"
                    f"<target dir={q(s['tag'])}/></filesystem>"  # never read-only: _sync_plan refuses it
                )
        # virtiofs shares guest memory with virtiofsd: the memory must be shared memfd.
        memory_backing = (
            "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
            if any(s["kind"] == "virtiofs" for s in sync)
            else ""
        )
        # QEMU runs as the invoking user (any .../system URI): it can read the project folder and
        # box files private to that user, and files it writes through a share belong to that user.
        # A remote URI needs the same paths on that host (shared storage); uploading volumes into a
        # remote storage pool is not done yet.
        seclabel = ""
        if uri.split("?")[0].endswith("/system"):
            seclabel = (
                f"<seclabel type='static' model='dac' relabel='no'><label>+{os.getuid()}:+{os.getgid()}"
                "</label></seclabel>"
            )
        cpu = "<cpu mode='host-passthrough'/>" if dtype == "kvm" else ""
        return "\n".join(
            [
                f"<domain type='{dtype}' xmlns:qemu={q(QEMU_NS)}>",
                f"  <name>{escape(name)}</name>",
                f"  <title>devenv {escape(target.project_id)}/{escape(m.name)}</title>",
                "  <metadata>",
                *meta,
                "  </metadata>",
                f"  <memory unit='MiB'>{memory_mib}</memory>",
                f"  <vcpu>{vcpus}</vcpu>",
                f"  {memory_backing}",
                f"  <os><type arch='x86_64' machine={q(opts.get('machine_type', 'pc'))}>hvm</type>"
                f"{''.join(os_xml)}</os>",
                "  <features><acpi/></features>",
                f"  {cpu}",
                "  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>",
                "  <devices>",
                f"    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                f"<source file={q(str(folder / 'disk.qcow2'))}/>{self._backing_xml(folder, box)}"
                "<target dev='vda' bus='virtio'/></disk>",
                "    <controller type='scsi' model='virtio-scsi'/>",
                f"    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
                f"<source file={q(str(folder / 'seed.iso'))}/><target dev='sda' bus='scsi'/><readonly/></disk>",
                *[f"    {x}" for x in fs],
                *[f"    {x}" for x in nets.interface_xml(list(joined))],
                f"    <serial type='file'><source path={q(str(folder / 'console.log'))} append='on'/>"
                "<target port='0'/></serial>",
                "    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
                "    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
                "    <memballoon model='none'/>",
                "  </devices>",
                f"  {seclabel}",
                "  <qemu:commandline>",
                "    <qemu:arg value='-netdev'/>",
                f"    <qemu:arg value={q(netdev)}/>",
                "    <qemu:arg value='-device'/>",
                "    <qemu:arg value='virtio-net-pci,netdev=devnet0,addr=0x10'/>",
                "  </qemu:commandline>",
                "</domain>",
            ]
        )

    def metadata(self, handle: str) -> dict | None:
        dom = self._dom(handle)
        if dom is None:
            return None
        lib = self._lib()
        try:
            raw = dom.metadata(lib.VIR_DOMAIN_METADATA_ELEMENT, NS)
        except lib.libvirtError:
            return None
        root = ET.fromstring(raw)
        ssh = root.find("ssh")
        box = root.find("box")
        return {
            "project": root.get("project"),
            "machine": root.get("machine"),
            "root": root.get("root"),
            "ssh": dict(ssh.attrib) if ssh is not None else {},
            "ports": [dict(p.attrib) for p in root.findall("port")],
            "sync": [dict(s.attrib) for s in root.findall("sync")],
            "box": dict(box.attrib) if box is not None else {},
            "nets": [dict(n.attrib) for n in root.findall("net")],
        }

    def find(self, target: Target) -> str | None:
        uri = self._uri_for(target.machine)
        handle = f"{uri}#{target.resource_name}"
        return handle if self.owns(handle, target) is Ownership.OURS else None

    def owns(self, handle: str, target: Target) -> Ownership:
        """OURS only for a domain on the machine's own libvirt whose devenv metadata names this
        project, machine and (when recorded) real project root. A handle naming another libvirt
        URI is never connected to."""
        if not isinstance(handle, str) or "#" not in handle:
            return Ownership.FOREIGN
        uri, name = split_handle(handle)
        if uri != self._uri_for(target.machine) or not safe_handle(name):
            return Ownership.FOREIGN
        if self._dom(handle) is None:
            return Ownership.GONE
        meta = self.metadata(handle)
        if not meta or meta.get("project") != target.project_id or meta.get("machine") != target.name:
            return Ownership.FOREIGN
        # The project id is a short hash a hostile folder name can collide with: the recorded real
        # root decides. A domain without one was defined by an older devenv: the id suffices.
        if (meta.get("root") or str(target.project_root)) != str(target.project_root):
            return Ownership.FOREIGN
        return Ownership.OURS

    def console_tail(self, handle: str, lines: int = 15) -> str:
        _, name = split_handle(handle)
        log = self.storage_dir(name) / "console.log"
        try:
            data = log.read_bytes()
        except OSError:
            return "(no console output)"
        text = data[-8192:].decode(errors="replace")
        if len(data) > 8192:
            # The cut fell inside a line, maybe inside a secret the guest echoed: a part of a
            # secret matches no mask, so the partial first line is dropped, not shown.
            text = text.partition("\n")[2]
        return "\n".join(line.rstrip("\r") for line in text.splitlines()[-lines:]) or "(no console output)"

    def _wait_ssh(self, handle: str, timeout: float) -> None:
        meta = self.metadata(handle) or {}
        port = int(meta.get("ssh", {}).get("port", 0))
        deadline = time.monotonic() + timeout
        dom = self._dom(handle)
        while time.monotonic() < deadline:
            if dom is None or not dom.isActive():
                raise MachineStateError(
                    f"machine '{meta.get('machine')}' stopped while booting; last console lines:\n"
                    + self.console_tail(handle),
                )
            tail = self.console_tail(handle, 40)
            if re.search(r"Failed to start .*(ssh|Secure Shell)", tail):
                raise MachineStateError(
                    f"the SSH server of machine '{meta.get('machine')}' failed to start; last console lines:\n"
                    + self.console_tail(handle),
                    hint="the box's sshd is broken or has no host key: rebuild the box (`devenv box build --force`)",
                )
            if ssh_banner(port):
                return
            time.sleep(0.25)
        raise MachineStateError(
            f"machine '{meta.get('machine')}' did not bring up SSH within {timeout:.0f}s; last console lines:\n"
            + self.console_tail(handle),
            hint="a slow emulated boot may need a larger boot_timeout in [machines.NAME.libvirt]",
        )

    def start(self, handle: str, *, timeout: float | None = None) -> None:
        dom = self._dom(handle)
        if dom is None:
            raise MachineStateError("the domain is gone", hint="run `devenv up` to recreate it")
        lib = self._lib()
        if not dom.isActive():
            self._start_networks(handle, dom)
            try:
                dom.create()
            except lib.libvirtError as exc:
                text = str(exc)
                if "Could not set up host forwarding rule" in text or "address already in use" in text.lower():
                    raise PortConflict(
                        f"a forwarded host port is already in use: {text}",
                        hint="free the port or change `ports` in the Devfile",
                    ) from exc
                raise MachineStateError(f"the VM does not start: {text}") from exc
        if timeout is None:
            meta = self.metadata(handle) or {}
            timeout = self._boot_timeout(meta)
        self._wait_ssh(handle, timeout)

    def _start_networks(self, handle: str, dom: Any) -> None:
        """The project networks the domain is on, started: after a host reboot or a libvirtd
        restart they are defined but down, and the domain would not start."""
        uri, _ = split_handle(handle)
        for n in (self.metadata(handle) or {}).get("nets", []):
            net = nets.lookup(self.conn(uri), n.get("network", ""))
            if net is None:
                raise MachineStateError(
                    f"the libvirt network {n.get('network')} of network '{n.get('name')}' is gone",
                    hint="`devenv reload` the machine (devenv makes the network again)",
                )
            nets.start(net, n.get("name", ""))

    def _boot_timeout(self, meta: dict) -> float:
        return float(meta.get("ssh", {}).get("boot_timeout", 180))

    def stop(self, handle: str, *, force: bool = False, timeout: float | None = None) -> None:
        dom = self._dom(handle)
        if dom is None or not dom.isActive():
            return
        lib = self._lib()
        if timeout is None:
            timeout = float((self.metadata(handle) or {}).get("ssh", {}).get("halt_timeout", 60))
        if not force:
            deadline = time.monotonic() + timeout

            def wait(seconds: float) -> bool:
                end = min(deadline, time.monotonic() + seconds)
                while time.monotonic() < end:
                    if not dom.isActive():
                        return True
                    time.sleep(0.2)
                return not dom.isActive()

            # The guest agent first: it works in guests with no power-button handler (a systemd
            # box without a running logind ignores ACPI). Then ACPI, for guests without an agent
            # or whose agent cannot run a shutdown command.
            for flag in (lib.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT, lib.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN):
                try:
                    dom.shutdownFlags(flag)
                except lib.libvirtError:
                    continue
                if wait(8 if flag == lib.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT else timeout):
                    return
            if wait(0):
                return
            self.reporter.warn(f"{split_handle(handle)[1]}: no clean shutdown after {timeout:.0f}s: powering off")
        try:
            dom.destroy()
        except lib.libvirtError:
            if dom.isActive():
                raise

    def destroy(self, handle: str) -> None:
        dom = self._dom(handle)
        lib = self._lib()
        meta = self.metadata(handle) if dom is not None else None
        if dom is not None:
            if dom.isActive():
                try:
                    dom.destroy()
                except lib.libvirtError:
                    pass
            flags = (
                lib.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | lib.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | lib.VIR_DOMAIN_UNDEFINE_NVRAM
            )
            try:
                dom.undefineFlags(flags)
            except lib.libvirtError as exc:
                if exc.get_error_code() != lib.VIR_ERR_NO_DOMAIN:
                    raise
        if meta and meta.get("project"):
            # Its addresses are free again; a network the project's last machine left goes.
            uri, name = split_handle(handle)
            nets.release(self.conn(uri), meta["project"], meta.get("root") or None, name)
        shutil.rmtree(self.storage_dir(split_handle(handle)[1]), ignore_errors=True)

    def state(self, handle: str) -> MachineState:
        dom = self._dom(handle)
        if dom is None:
            return MachineState.NOT_CREATED
        lib = self._lib()
        st, _reason = dom.state()
        if st in (lib.VIR_DOMAIN_RUNNING, lib.VIR_DOMAIN_BLOCKED, lib.VIR_DOMAIN_SHUTDOWN):
            return MachineState.RUNNING
        if st in (lib.VIR_DOMAIN_PAUSED, lib.VIR_DOMAIN_PMSUSPENDED):
            return MachineState.SUSPENDED
        if st == lib.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage(0):
            return MachineState.SUSPENDED
        return MachineState.STOPPED

    def sweep(self, project_id: str, root: Path | None = None) -> list[str]:
        """Remove the project's domains; with ``root``, not one recorded for another folder."""
        removed = []
        try:
            conn = self.conn()
        except BackendUnavailable:
            return removed
        for dom in conn.listAllDomains(0):
            handle = f"{self.default_uri()}#{dom.name()}"
            meta = self.metadata(handle)
            other_root = root is not None and (meta or {}).get("root") not in (None, "", str(root))
            if meta and meta.get("project") == project_id and not other_root:
                self.destroy(handle)
                removed.append(dom.name())
        removed += nets.sweep(conn, project_id, str(root) if root is not None else None)
        return removed

    def package(
        self,
        handle: str,
        target: Target,
        name: str,
        version: str,
        baked: list[str],
        *,
        record: Mapping[str, Any] | None = None,
    ) -> dict:
        """Flatten the machine's disk (overlay + box) into a new box NAME@VERSION in the box store.

        The machine must be stopped: a running guest's disk is not consistent. Its SSH host key
        and authorized key stay in the image until the next machine's seed replaces them at boot.
        With ``record`` (a box build) the box boots the kernel and initrd the build VM booted and
        records what the builder says; else it takes both from the machine's own box.
        """
        import tempfile

        meta = self.metadata(handle) or {}
        dom = self._dom(handle)
        if dom is not None and dom.isActive():
            raise MachineStateError(f"machine '{target.name}' is running", hint=f"`devenv halt {target.name}` first")
        boot: dict[str, Path | None] = {}
        extra: dict = {"baked": baked}
        if record is None:
            src = store.find_stored(
                meta.get("box", {}).get("name", ""), meta.get("box", {}).get("version") or None, "libvirt"
            )
            extra["packaged_from"] = f"{target.project_id}/{target.name}"
            if src is not None:
                boot = {key: src.file(key) for key in ("kernel", "initrd")}
                extra.update({k: src.meta[k] for k in ("cmdline", "ssh_user", "sync", "bootloader") if k in src.meta})
        else:
            boot = self._booted_files(dom)
            extra = {**record, "baked": baked}
        folder = self.storage_dir(split_handle(handle)[1])
        with tempfile.TemporaryDirectory(dir=store.store_root().parent) as tmp:
            disk = Path(tmp) / "disk.qcow2"
            with self.reporter.progress(target.name, f"packaging the disk as box {name}@{version}"):
                r = subprocess.run(
                    ["qemu-img", "convert", "-q", "-O", "qcow2", str(folder / "disk.qcow2"), str(disk)],
                    capture_output=True,
                    text=True,
                )
                if r.returncode != 0:
                    raise BoxError(f"cannot flatten the disk of '{target.name}': {r.stderr.strip()}")
            files = {"disk": disk}
            for key, f in boot.items():
                if f is not None:
                    shutil.copy2(f, Path(tmp) / f.name)
                    files[key] = Path(tmp) / f.name
            stored = store.store_box(name, version, "libvirt", files, extra, work=Path(tmp))
        return {"provider": "libvirt", "ref": str(stored.folder), "digest": "sha256:" + (stored.digest() or "")}

    @staticmethod
    def _booted_files(dom: Any) -> dict[str, Path | None]:
        """The kernel and initrd the domain boots directly (devenv wrote them into its XML)."""
        if dom is None:
            return {}
        os_el = ET.fromstring(dom.XMLDesc(0)).find("os")
        found: dict[str, Path | None] = {}
        for key in ("kernel", "initrd"):
            el = os_el.find(key) if os_el is not None else None
            found[key] = Path(el.text) if el is not None and el.text and Path(el.text).is_file() else None
        return found

    # -- optional roles ------------------------------------------------------------------------
    def suspend(self, handle: str) -> None:
        dom = self._dom(handle)
        lib = self._lib()
        try:
            dom.managedSave(0)
        except lib.libvirtError as exc:
            raise UnsupportedOperation(
                f"cannot suspend: {exc}", hint="machines with 9p sync folders cannot be saved; use halt"
            ) from exc

    def resume(self, handle: str) -> None:
        dom = self._dom(handle)
        lib = self._lib()
        st, _ = dom.state()
        if st == lib.VIR_DOMAIN_PAUSED:
            dom.resume()
        else:
            dom.create()
        self._wait_ssh(handle, 60)

    def snapshot_save(self, handle: str, name: str) -> None:
        dom = self._dom(handle)
        lib = self._lib()
        xml = f"<domainsnapshot><name>{escape(name)}</name><description>devenv</description></domainsnapshot>"
        try:
            dom.snapshotCreateXML(xml, 0)
        except lib.libvirtError as exc:
            if "already exists" in str(exc):
                raise UnsupportedOperation(
                    f"snapshot '{name}' already exists", hint="delete it first or choose another name"
                ) from exc
            hint = None
            if "non-migratable" in str(exc) or "migration" in str(exc).lower():
                hint = (
                    "a running machine with shared folders (virtiofs/9p) cannot be snapshotted live: "
                    '`devenv halt` it and snapshot the disk, or use sync type = "rsync"'
                )
            raise UnsupportedOperation(f"cannot take snapshot '{name}': {exc}", hint=hint) from exc

    def _snapshot(self, handle: str, name: str) -> Any:
        dom = self._dom(handle)
        lib = self._lib()
        try:
            return dom.snapshotLookupByName(name, 0)
        except lib.libvirtError as exc:
            raise UsageError(
                f"no snapshot named '{name}'", hint="`devenv snapshot list NAME` shows the snapshots"
            ) from exc

    def snapshot_restore(self, handle: str, name: str) -> None:
        snap = self._snapshot(handle, name)
        self._dom(handle).revertToSnapshot(snap, 0)
        if self._dom(handle).isActive():
            self._wait_ssh(handle, 60)

    def snapshot_list(self, handle: str) -> list[str]:
        dom = self._dom(handle)
        return sorted(s.getName() for s in dom.listAllSnapshots(0))

    def snapshot_delete(self, handle: str, name: str) -> None:
        self._snapshot(handle, name).delete(0)
