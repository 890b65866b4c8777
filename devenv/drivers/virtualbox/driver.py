"""VirtualBox driver: virtual machines under VirtualBox 6.1/7.x, driven through VBoxManage.

A box (box.ovf + its .vmdk disk + box.json in the box store) is imported once per box version
as a base VM (`devenv-base-NAME-VERSION`) with a snapshot "base"; each machine is a linked
clone of that snapshot, so it costs a differencing disk, never a copy. Machines carry devenv
extradata (project, machine and a JSON record of SSH endpoint, forwards, sync folders), so they
are found and described without .devenv/.

Identity is the libvirt driver's: devenv makes the machine's client key and host key and hands
them over in a NoCloud seed (an ISO attached as a DVD); SSH runs through a NAT forward on
127.0.0.1 with that host key pinned. Sync folders are VirtualBox shared folders (automounted by
the Guest Additions) when the box says it has them, copies over SSH otherwise.

Private networks are more NICs, as Vagrant's VirtualBox provider makes a private_network: a
network with a subnet is a host-only interface whose address is the subnet's first host (found,
or made and then removed with the last VM on it); an `internal` network, and one without a
subnet, is a VirtualBox internal network (`devenv-PROJECT-NAME`). VirtualBox has no DNS and no
DHCP devenv relies on there: every address is fixed (the Devfile's, or one devenv assigns),
recorded in the VM's metadata and handed to the guest in the seed's network-config.

VirtualBox cannot run on our machines: this driver is verified against a scripted VBoxManage
stand-in (tests/fakes/VBoxManage), not yet against a real VirtualBox.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from devenv.boxes import store
from devenv.contract import (
    QUIET,
    BoxArtifact,
    Features,
    HostEndpoint,
    MachineState,
    Ownership,
    Reporter,
    Target,
    safe_handle,
)
from devenv.drivers.hostports import check_host_addresses, plan_forwards, ssh_banner
from devenv.drivers.hostports import free_port as _free_port
from devenv.drivers.hostports import port_free as _port_free
from devenv.drivers.vm.common import VmMetadataMixin
from devenv.errors import (
    BackendUnavailable,
    BoxError,
    CommandFailed,
    DevenvError,
    MachineStateError,
    PortConflict,
    UnsupportedOperation,
    UsageError,
)
from devenv.model.schema import USER_NAME_HELP, USER_NAME_PATTERN, Bool, Field, Int, Problem, Str, Table

if TYPE_CHECKING:
    from devenv.model.networks import Attachment

MIN_VERSION = (6, 1)  # inclusive
MAX_VERSION = (8, 0)  # exclusive
BASE_SNAPSHOT = "base"
SEED_CONTROLLER = "devenv-seed"
KEY_PROJECT = "devenv/project"
KEY_MACHINE = "devenv/machine"
KEY_META = "devenv/meta"  # written last: a VM without it is a half-made clone
KEY_BASE = "devenv/base"  # on base VMs only (a clone inherits it and drops it)
LOCK_RETRY_SECONDS = 5.0  # VirtualBox unlocks a VM a moment after poweroff returns
IDE_TYPES = ("PIIX3", "PIIX4", "ICH6")
# modifyvm's --nic1..--nic8 (the adapters of the default PIIX3 chipset): NIC1 is the NAT (SSH and
# ports), so a machine joins at most seven private networks.
MAX_NICS = 8
# Where a network without a subnet gets one: it is an internal network (no host side), so only the
# guest routes it, and the block is private (RFC 1918) and away from VirtualBox's own (NAT
# 10.0.2.0/24, host-only 192.168.56.0/21) and from the first pools Docker takes (172.17-172.2x).
INTNET_POOL = "172.30.0.0/16"
HOSTONLY_RECORD = "hostonlyifs.json"  # in home(): the host-only interfaces devenv made (only those go)

# VMState values (VBoxManage showvminfo --machinereadable) by devenv state.
_RUNNING = ("running", "starting", "stopping", "livesnapshotting", "onlinesnapshotting", "teleporting",
            "gurumeditation", "stuck")  # fmt: skip
_SUSPENDED = ("paused", "saved", "saving", "restoring", "aborted-saved", "teleportingpausedvm")


class VMLocked(MachineStateError):
    """Another process (a VirtualBox window, another VBoxManage) holds the VM's lock."""


_OPTIONS = Table(
    {
        "boot_timeout": Field(Int(minimum=5, maximum=3600, description="Seconds to wait for SSH"), default=180),
        "halt_timeout": Field(Int(minimum=1, maximum=600, description="Seconds to wait for ACPI shutdown"), default=60),
        "ssh_user": Field(
            Str(pattern=USER_NAME_PATTERN, pattern_help=USER_NAME_HELP, description="Login user (default: the box's)")
        ),
        "gui": Field(Bool(description="Start with a VirtualBox window instead of headless"), default=False),
    },
    description="Options for the virtualbox driver",
)


def parse_machinereadable(text: str) -> dict[str, str]:
    """`key="value"` lines (keys quoted when they hold spaces) into a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r'^(?:"((?:[^"\\]|\\.)*)"|([^="]+))=(.*)$', line)
        if not m:
            continue
        key = m.group(1) if m.group(1) is not None else m.group(2)
        value = m.group(3)
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
        out[_unescape(key)] = _unescape(value)
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), s)


def parse_list(text: str) -> list[str]:
    """`VBoxManage list vms`: `"name" {uuid}` lines into names."""
    return [m.group(1) for m in re.finditer(r'^"(.*)" \{[0-9a-fA-F-]+\}\s*$', text, re.M)]


def parse_version(text: str) -> tuple[tuple[int, int, int], str] | None:
    """`VBoxManage --version` ("7.0.14r161095", maybe after warning lines) into numbers and text."""
    found = None
    for line in text.splitlines():
        m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?\S*\s*$", line)
        if m:
            found = ((int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)), line.strip())
    return found


def parse_hostonlyifs(text: str) -> list[dict[str, str]]:
    """`VBoxManage list hostonlyifs`: blocks of `Key: value` lines (a blank line between)."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        key, sep, value = line.partition(":")
        if not line.strip() or (key == "Name" and cur):
            if cur.get("Name"):
                out.append(cur)
            cur = {}
        if line.strip() and sep:
            cur[key.strip()] = value.strip()
    return out


def network_config(nat_mac: str, networks: list[dict]) -> str:
    """The seed's NoCloud network-config (version 2): the NAT NIC by DHCP, each private network's
    fixed address, every NIC matched by the MAC devenv gave it (names differ between guests).

    Given a network-config, cloud-init configures only what it lists: the NAT NIC is in it."""

    def mac(m: str) -> str:
        return ":".join(m[i : i + 2] for i in range(0, 12, 2)).lower()

    lines = [
        "version: 2",
        "ethernets:",
        "  nat:",
        "    match:",
        f'      macaddress: "{mac(nat_mac)}"',
        "    dhcp4: true",
    ]
    for n in networks:
        prefix = ipaddress.ip_network(n["subnet"]).prefixlen
        lines += [
            f"  devenv-{n['name']}:",  # a network name is [a-z0-9_-]: a plain YAML key
            "    match:",
            f'      macaddress: "{mac(n["mac"])}"',
            f'    addresses: ["{ipaddress.IPv4Address(n["ip"])}/{prefix}"]',
        ]
    return "\n".join(lines) + "\n"


def _digest(text: str) -> int:
    """A stable number from text (Python's hash() changes between runs)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)


def snapshot_names(text: str) -> list[str]:
    """`snapshot VM list --machinereadable`: SnapshotName, SnapshotName-1, SnapshotName-1-1, ..."""
    return [v for k, v in parse_machinereadable(text).items() if re.fullmatch(r"SnapshotName(-\d+)*", k)]


class VirtualBoxDriver(VmMetadataMixin):
    gone_message = "the VM is gone or half-made"

    name: ClassVar[str] = "virtualbox"
    features: ClassVar[Features] = Features(
        snapshots=True,
        suspend=True,
        apply_settings=True,
        copy_sync=True,
        networks=True,
        host_access=True,
        env_at_create=False,
    )
    reporter: Reporter = QUIET  # set by the core before use
    options: ClassVar[Table] = _OPTIONS

    def __init__(self) -> None:
        self._base_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # -- engine access -----------------------------------------------------------------------
    def vboxmanage(self) -> str:
        """VBoxManage: $VBOXMANAGE (a path or a command name), else from PATH."""
        named = os.environ.get("VBOXMANAGE")
        if named:
            path = named if os.sep in named else shutil.which(named)
            if path and os.access(path, os.X_OK) and os.path.isfile(path):
                return path
            raise BackendUnavailable(
                f"VBOXMANAGE is set to {named}, which is not an executable",
                hint="point VBOXMANAGE at VirtualBox's VBoxManage (e.g. /usr/bin/VBoxManage), or unset it",
            )
        for cmd in ("VBoxManage", "vboxmanage"):
            path = shutil.which(cmd)
            if path:
                return path
        raise BackendUnavailable(
            "VirtualBox is not installed: there is no VBoxManage on PATH",
            hint="install VirtualBox 7 from https://www.virtualbox.org/wiki/Linux_Downloads (Debian 12 does not "
            "package it), or set VBOXMANAGE to the path of VBoxManage",
        )

    def _run(
        self, *args: str, check: bool = True, timeout: float = 600, retry_locked: float = 0
    ) -> subprocess.CompletedProcess:
        argv = [self.vboxmanage(), *args]
        deadline = time.monotonic() + retry_locked
        while True:
            try:
                r = self._exec(argv, timeout)
            except subprocess.TimeoutExpired as exc:
                raise BackendUnavailable(
                    f"VBoxManage {' '.join(args[:2])} did not finish within {timeout:.0f}s",
                    hint="VirtualBox's service (VBoxSVC) may hang: check `VBoxManage list runningvms`",
                ) from exc
            except OSError as exc:
                raise BackendUnavailable(f"cannot run {argv[0]}: {exc.strerror}") from exc
            if r.returncode == 0 or not check:
                return r
            err = self._error(args, r)
            if isinstance(err, VMLocked) and time.monotonic() < deadline:
                time.sleep(0.25)
                continue
            raise err

    @staticmethod
    def _exec(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    @staticmethod
    def _vm_arg(args: tuple[str, ...]) -> str:
        if args and args[0] == "sharedfolder":
            return args[2] if len(args) > 2 else "?"
        return args[1] if len(args) > 1 else "?"

    @staticmethod
    def _first_error(r: subprocess.CompletedProcess) -> str:
        """The useful line of VBoxManage's failure: its first error line that is no Details/Context."""
        errors = [
            line.split("error:", 1)[1].strip()
            for line in r.stderr.splitlines()
            if "error:" in line and not line.split("error:", 1)[1].strip().startswith(("Details:", "Context:"))
        ]
        first = errors[0] if errors else (r.stderr.strip() or r.stdout.strip() or f"exit code {r.returncode}")
        return first.splitlines()[0]

    def _error(self, args: tuple[str, ...], r: subprocess.CompletedProcess) -> DevenvError:
        """VBoxManage's failure as a devenv error (the first error line is the useful one)."""
        text = f"{r.stderr}\n{r.stdout}"
        first = self._first_error(r)
        vm = self._vm_arg(args)
        if args[0] in ("controlvm", "snapshot"):
            what = " ".join(args[:1] + args[2:3])  # VBoxManage controlvm VM ACTION
        else:
            what = " ".join(args[:2] if args[0] == "sharedfolder" else args[:1])
        if "VBOX_E_INVALID_OBJECT_STATE" in text or "is already locked" in text:
            return VMLocked(
                f"VM '{vm}' is locked by another process: {first}",
                hint="close its VirtualBox window, or wait for the other VBoxManage/devenv command to finish, "
                "then run the command again",
            )
        if "Could not find a registered machine" in text:
            return MachineStateError(f"VM '{vm}' is gone from VirtualBox", hint="run `devenv up` to make it again")
        if "VERR_NAT_REDIR_SETUP" in text or "failed to set up redirection" in text:
            return PortConflict(
                f"VirtualBox cannot forward a host port of VM '{vm}': it is already in use ({first})",
                hint="stop what uses the port (or the machine that forwards it), or change `ports` in the Devfile",
            )
        if "VERR_VM_DRIVER_NOT_INSTALLED" in text or "kernel driver not installed" in text.lower():
            return BackendUnavailable(
                "the VirtualBox kernel driver (vboxdrv) is not loaded",
                hint="run `sudo /sbin/vboxconfig` to build and load it (it needs the kernel headers)",
            )
        if re.search(r"VERR_(VMX|SVM)_", text) or "VT-x is not available" in text:
            return BackendUnavailable(
                "VirtualBox cannot use hardware virtualization (VT-x/AMD-V) on this host",
                hint="enable it in the firmware settings (inside a VM: enable nested virtualization), "
                "or unload KVM if it holds VT-x (`sudo rmmod kvm_intel kvm_amd`)",
            )
        if "Failed to create the VirtualBox object" in text:
            return BackendUnavailable(
                "VBoxManage cannot reach the VirtualBox service (VBoxSVC)",
                hint="check that VirtualBox is installed for this user (`VBoxManage list vms` must work)",
            )
        return CommandFailed(f"VBoxManage {what} failed: {first}")

    @staticmethod
    def _not_found(r: subprocess.CompletedProcess) -> bool:
        return r.returncode != 0 and (
            "Could not find a registered machine" in r.stderr or "VBOX_E_OBJECT_NOT_FOUND" in r.stderr
        )

    def describe_engine(self, machine=None) -> str:
        return "available"  # doctor checks VBoxManage itself

    def check_available(self, machine=None) -> None:
        r = self._run("--version", check=False, timeout=60)
        found = parse_version(r.stdout) if r.returncode == 0 else None
        if found is None:
            raise BackendUnavailable(
                f"cannot read the VirtualBox version from `VBoxManage --version`: "
                f"{(r.stderr or r.stdout).strip() or 'no output'}",
                hint="run `VBoxManage --version` to see what is wrong with the VirtualBox installation",
            )
        version, text = found
        if not MIN_VERSION <= version[:2] < MAX_VERSION:
            raise BackendUnavailable(
                f"VirtualBox {text} is not supported: the virtualbox driver drives VirtualBox 6.1 and 7.x",
                hint="install VirtualBox 7 (or 6.1), or point VBOXMANAGE at a supported VBoxManage",
            )

    def _info(self, vm: str) -> dict[str, str] | None:
        """showvminfo --machinereadable, or None when no such VM is registered."""
        r = self._run("showvminfo", vm, "--machinereadable", check=False)
        if self._not_found(r):
            return None
        if r.returncode != 0:
            raise self._error(("showvminfo", vm), r)
        return parse_machinereadable(r.stdout)

    def _extradata(self, vm: str) -> dict[str, str] | None:
        """The VM's extradata (getextradata VM enumerate), or None when no such VM is registered."""
        r = self._run("getextradata", vm, "enumerate", check=False)
        if self._not_found(r):
            return None
        if r.returncode != 0:
            raise self._error(("getextradata", vm), r)
        out = {}
        for line in r.stdout.splitlines():
            if line.startswith("Key: ") and ", Value: " in line:
                key, _, value = line[len("Key: ") :].partition(", Value: ")
                out[key] = value
        return out

    def _vmstate(self, vm: str) -> str | None:
        info = self._info(vm)
        return None if info is None else info.get("VMState", "")

    def metadata(self, handle: str) -> dict | None:
        ed = self._extradata(handle)
        if not ed or KEY_META not in ed:
            return None
        try:
            meta = json.loads(ed[KEY_META])
        except ValueError:
            return None
        meta.setdefault("project", ed.get(KEY_PROJECT))
        meta.setdefault("machine", ed.get(KEY_MACHINE))
        return meta

    # -- storage -------------------------------------------------------------------------------
    def home(self) -> Path:
        from devenv.state import data_dir

        return data_dir() / "virtualbox"

    def vms_dir(self) -> Path:
        """Where VirtualBox keeps devenv's VMs (settings and disks): --basefolder."""
        return self.home() / "vms"

    def storage_dir(self, vm: str) -> Path:
        """devenv's own files for a machine (the seed ISO)."""
        return self.home() / "machines" / vm

    # -- validation ----------------------------------------------------------------------------
    def validate(self, machine) -> list[Problem]:
        problems: list[Problem] = []
        if machine.box:
            ref = store.parse_ref(machine.box)
            if ref.kind == "image":
                problems.append(Problem(("box",), "the virtualbox driver boots VM boxes, not Docker images"))
        for i, s in enumerate(machine.sync):
            if s.type in ("bind", "9p", "virtiofs"):
                problems.append(
                    Problem(
                        ("sync", i, "type"),
                        f"the virtualbox driver cannot sync with '{s.type}' (use auto, vboxsf or rsync)",
                    )
                )
        for i, p in enumerate(machine.ports):
            if ":" in p.host_ip:
                problems.append(Problem(("ports", i, "host_ip"), "VirtualBox NAT forwards IPv4 host addresses only"))
        if len(machine.networks) > MAX_NICS - 1:
            problems.append(
                Problem(
                    ("networks",),
                    f"a VirtualBox machine joins at most {MAX_NICS - 1} private networks "
                    f"({MAX_NICS} network adapters, the first one NAT)",
                )
            )
        return problems

    # -- boxes ---------------------------------------------------------------------------------
    def preflight(self, target: Target) -> None:
        check_host_addresses(target)  # VirtualBox's NAT forwards bind on this host
        hostonly = [a for a in target.machine.networks if self._is_hostonly(a)]
        if hostonly:
            # A subnet that collides with a host-only interface is said before anything is made.
            interfaces = self._hostonlyifs()
            for a in hostonly:
                assert a.network.subnet is not None  # _is_hostonly
                self._hostonly_match(a.name, a.network.subnet, interfaces)

    def prepare_box(self, target: Target, box: str, *, pull: bool = False) -> BoxArtifact:
        ref = store.parse_ref(box)
        if ref.kind != "recipe":
            raise BoxError(
                f"the virtualbox driver cannot use box '{box}'",
                hint="use a VirtualBox box from the box store (`devenv box list`)",
            )
        stored = store.find_stored(ref.name, ref.version, "virtualbox")
        if stored is None:
            raise BoxError(
                f"no virtualbox box named {box} in the box store ({store.store_root()})",
                hint="`devenv box build NAME --output vagrant` makes a VirtualBox .box from a recipe; add it (or "
                "any Vagrant virtualbox .box) with `devenv box add FILE.box --name NAME`",
            )
        ovf = stored.file("ovf") or stored.folder / "box.ovf"
        disk = stored.file("disk")
        if not ovf.is_file() or disk is None or not disk.is_file():
            raise BoxError(
                f"box {stored.name}@{stored.version} (virtualbox) is incomplete: it needs box.ovf and its disk "
                f"in {stored.folder}",
                hint=f"remove it (`devenv box remove {stored.name}@{stored.version}`) and add it again",
            )
        return BoxArtifact(
            name=stored.name,
            version=stored.version,
            ref=str(ovf),
            digest="sha256:" + (stored.digest("disk") or ""),
            extra={
                "base_vm": f"devenv-base-{stored.name}-{stored.version}",
                "ssh_user": stored.meta.get("ssh_user", "root"),
                "guest_additions": bool(stored.meta.get("guest_additions")),
            },
        )

    @contextlib.contextmanager
    def _base_lock(self, base: str) -> Iterator[None]:
        """One import per base VM: across threads (parallel `up`) and processes (other projects)."""
        with self._guard:
            lock = self._base_locks.setdefault(base, threading.Lock())
        self.home().mkdir(parents=True, exist_ok=True)
        with lock, open(self.home() / f".{base}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def ensure_base(self, box: BoxArtifact) -> str:
        """The box's base VM, imported (and given its "base" snapshot) on first use."""
        base = box.extra["base_vm"]
        record = {"box": box.name, "version": box.version, "digest": box.digest}
        with self._base_lock(base):
            ed = self._extradata(base)
            if ed is None:
                self.reporter.info(
                    None, f"importing box {box.name}@{box.version} into VirtualBox as {base} (once per version)"
                )
                # `VBoxManage import` applies all an OVF says (shared folders, serial ports, NICs):
                # only a descriptor with no more than devenv's own (vagrantbox.render_ovf) is imported.
                from devenv.boxes import vagrantbox

                vagrantbox.check_own_ovf(Path(box.ref), f"box {box.name}@{box.version}")
                self._run(
                    "import", box.ref, "--vsys", "0", "--vmname", base, "--basefolder", str(self.vms_dir()),
                    timeout=3600,
                )  # fmt: skip
                ed = {}
                snaps: list[str] = []
            elif KEY_BASE in ed:
                try:
                    made_from = json.loads(ed[KEY_BASE]).get("digest")
                except (ValueError, AttributeError):
                    made_from = None
                if made_from and box.digest and made_from != box.digest:
                    self.reporter.warn(
                        f"{base} was imported from another build of {box.name}@{box.version}; new machines still "
                        f"use it (`VBoxManage unregistervm {base} --delete` once no machine is made from it)"
                    )
                return base
            else:
                snaps = self._snapshot_names(base)  # an import that stopped half-way
            if BASE_SNAPSHOT not in snaps:
                self._run("snapshot", base, "take", BASE_SNAPSHOT, "--description", "devenv: linked clones start here")
            self._run("setextradata", base, KEY_BASE, json.dumps(record, sort_keys=True, separators=(",", ":")))
        return base

    # -- lifecycle -----------------------------------------------------------------------------
    def _forwards(self, target: Target) -> list[dict]:
        return plan_forwards(target, self.reporter)

    def _sync_plan(self, target: Target, box: BoxArtifact) -> list[dict]:
        plan = []
        additions = bool(box.extra.get("guest_additions"))
        for i, s in enumerate(target.machine.sync):
            kind = s.type
            if kind == "auto":
                kind = "vboxsf" if additions else "rsync"
            if kind == "vboxsf" and not additions:
                raise BoxError(
                    f"sync folder {s.host} asks for vboxsf, but box {box.name}@{box.version} has no VirtualBox "
                    "Guest Additions",
                    hint='use type = "rsync" (or "auto"), or a box whose box.json says "guest_additions": true',
                )
            plan.append(
                {"tag": f"sync{i}", "host": str(s.host), "guest": s.guest, "kind": kind, "read_only": s.read_only}
            )
        return plan

    def create(self, target: Target, box: BoxArtifact, *, env: dict[str, str] | None = None) -> str:
        m = target.machine
        name = target.resource_name
        ed = self._extradata(name)
        if ed is not None:
            labelled = ed.get(KEY_PROJECT) == target.project_id and ed.get(KEY_MACHINE, m.name) == m.name
            if KEY_META in ed and labelled and KEY_MACHINE in ed:
                return name
            if KEY_PROJECT in ed and not labelled:
                # Our name, someone else's labels: never adopt or remove it.
                raise MachineStateError(
                    f"a VirtualBox VM named {name} exists but is not devenv's machine '{m.name}' of this project",
                    hint=f"remove or rename it (`VBoxManage unregistervm {name} --delete`) if it is not needed",
                )
            self.reporter.info(m.name, f"removing {name}, a VM an earlier run left half-made")
            self.destroy(name)
        forwards = self._forwards(target)  # port conflicts and sync problems before anything is made
        sync = self._sync_plan(target, box)
        base = self.ensure_base(box)
        self._run(
            "clonevm", base, "--snapshot", BASE_SNAPSHOT, "--options", "link", "--name", name,
            "--basefolder", str(self.vms_dir()), "--register",
        )  # fmt: skip
        try:
            # Labelled first: should this process die before the end, sweep() still finds the VM.
            self._run("setextradata", name, KEY_PROJECT, target.project_id)
            self._run("setextradata", name, KEY_MACHINE, m.name)
            self._run("setextradata", name, KEY_BASE)  # copied from the base by clonevm: this VM is no base
            self._configure(target, box, name, ssh_port=_free_port("127.0.0.1"), forwards=forwards, sync=sync)
        except BaseException:
            # find() sees complete VMs only, so the project cannot clean up this one: do it here.
            with contextlib.suppress(Exception):
                self.destroy(name)
            raise
        return name

    def _seed_slot(self, info: dict[str, str], old: dict | None) -> tuple[str, int, int] | None:
        """Where the seed DVD goes: where it was, else a free slot on the VM's IDE controller."""
        if old and old.get("seed"):
            ctl, port, device = old["seed"]
            return ctl, int(port), int(device)
        i = 0
        while f"storagecontrollername{i}" in info:
            ctl = info[f"storagecontrollername{i}"]
            if info.get(f"storagecontrollertype{i}") in IDE_TYPES:
                for port, device in ((1, 0), (1, 1), (0, 1), (0, 0)):
                    if info.get(f"{ctl}-{port}-{device}", "none") in ("none", "emptydrive"):
                        return ctl, port, device
            i += 1
        return None

    def _configure(
        self,
        target: Target,
        box: BoxArtifact,
        name: str,
        *,
        ssh_port: int,
        forwards: list[dict],
        sync: list[dict],
        old: dict | None = None,
        retry_locked: float = 0,
    ) -> None:
        """Hardware, NAT forwards, private networks, seed DVD, shared folders, then the devenv record (last).

        A machine on private networks (or leaving them) is configured under the network lock, up
        to its record: the next machine then sees the interfaces, subnets and addresses it took."""
        joins = bool(target.machine.networks or (old or {}).get("networks"))
        with self._network_lock() if joins else contextlib.nullcontext():
            self._configure_vm(target, box, name, ssh_port, forwards, sync, old, retry_locked)
            if any(n.get("kind") == "hostonly" for n in (old or {}).get("networks", [])):
                self._remove_unused_hostonly()  # a network the machine left may have been its last user

    def _configure_vm(
        self,
        target: Target,
        box: BoxArtifact,
        name: str,
        ssh_port: int,
        forwards: list[dict],
        sync: list[dict],
        old: dict | None,
        retry_locked: float,
    ) -> None:
        from devenv.drivers.vm import identity, seed
        from devenv.state import ProjectState

        m = target.machine
        opts = m.driver_options()
        keys = identity.ensure_keys(
            ProjectState(target.project_root).ensure_machine_dir(m.name),
            f"{target.project_id}/{m.name}",
            fresh=old is None,  # a new VM: keys a checkout brought along are never used
        )
        keys.pin("127.0.0.1", ssh_port)
        ssh_user = opts.get("ssh_user") or box.extra.get("ssh_user", "root")
        info = self._info(name) or {}
        networks = self._plan_networks(target, name, old)
        args = ["modifyvm", name]
        if m.cpus:
            args += ["--cpus", str(max(1, int(m.cpus)))]
        if m.memory:
            args += ["--memory", str(max(4, m.memory // 1024**2))]
        args += ["--nic1", "nat"]
        for key, rule in sorted(info.items()):
            if key.startswith("Forwarding("):
                args += ["--natpf1", "delete", rule.split(",", 1)[0]]
        args += ["--natpf1", f"ssh,tcp,127.0.0.1,{ssh_port},,22"]
        for i, f in enumerate(forwards):
            args += ["--natpf1", f"port{i},{f['protocol']},{f['host_ip']},{f['host']},,{f['guest']}"]
        nat_mac = info.get("macaddress1", "")
        if networks and not re.fullmatch(r"[0-9A-Fa-f]{12}", nat_mac):
            nat_mac = self._mac(name, "nat")  # the guest's network-config names the NAT NIC by its MAC
            args += ["--macaddress1", nat_mac]
        for n in networks:
            nic = n["nic"]
            args += [f"--nic{nic}", n["kind"], f"--macaddress{nic}", n["mac"]]
            args += (
                [f"--hostonlyadapter{nic}", n["adapter"]]
                if n["kind"] == "hostonly"
                else [f"--intnet{nic}", n["intnet"]]
            )
        # NICs of networks the machine left (a reload) are switched off.
        for nic in sorted({int(n["nic"]) for n in (old or {}).get("networks", [])} - {n["nic"] for n in networks}):
            args += [f"--nic{nic}", "none"]
        self._run(*args, retry_locked=retry_locked)
        folder = self.storage_dir(name)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        seed_iso = folder / "seed.iso"
        files = {
            "meta-data": seed.meta_data(f"{name}-{int(time.time())}", m.hostname),
            "user-data": seed.user_data(
                hostname=m.hostname,
                authorized_key=keys.client_pub,
                host_key_private=keys.host_private,
                host_key_public=keys.host_pub,
            ),
        }
        if networks:
            # The guest configures its fixed addresses from the seed, as Vagrant configures a
            # private_network's: cloud-init applies a NoCloud network-config (a new instance-id
            # above makes it apply again after a reload).
            files["network-config"] = network_config(nat_mac, networks)
        seed.write_iso(seed_iso, files)
        slot = self._seed_slot(info, old)
        if slot is None:
            self._run("storagectl", name, "--name", SEED_CONTROLLER, "--add", "ide")
            slot = (SEED_CONTROLLER, 0, 0)
        ctl, port, device = slot
        self._run(
            "storageattach", name, "--storagectl", ctl, "--port", str(port), "--device", str(device),
            "--type", "dvddrive", "--medium", str(seed_iso),
        )  # fmt: skip
        i = 1
        while f"SharedFolderNameMachineMapping{i}" in info:
            tag = info[f"SharedFolderNameMachineMapping{i}"]
            if re.fullmatch(r"sync\d+", tag):
                self._run("sharedfolder", "remove", name, "--name", tag)
            i += 1
        for s in sync:
            if s["kind"] != "vboxsf":
                continue
            share = ["sharedfolder", "add", name, "--name", s["tag"], "--hostpath", s["host"]]
            if s["read_only"]:
                share.append("--readonly")
            self._run(*share, "--automount", "--auto-mount-point", s["guest"])
        meta = {
            "project": target.project_id,
            "machine": m.name,
            "root": str(target.project_root),
            "ssh": {
                "host": "127.0.0.1",
                "port": ssh_port,
                "user": ssh_user,
                "keys": str(keys.folder),
                "boot_timeout": opts.get("boot_timeout", 180),
                "halt_timeout": opts.get("halt_timeout", 60),
                "gui": bool(opts.get("gui", False)),
            },
            "ports": forwards,
            "sync": sync,
            "seed": [ctl, port, device],
            "box": {"name": box.name, "version": box.version, "digest": box.digest},
        }
        if networks:
            meta["networks"] = networks
        self._run("setextradata", name, KEY_META, json.dumps(meta, sort_keys=True, separators=(",", ":")))

    def apply_settings(self, handle: str, target: Target, box: BoxArtifact) -> bool:
        """Apply changed cpus/memory/ports/hostname/sync in place: stop, reconfigure, keep the disk."""
        old = self.metadata(handle) or {}
        if self._vmstate(handle) in ("saved", "aborted-saved"):
            self.resume(handle)  # a saved VM only lets NAT rules change: shut it down properly first
        self.stop(handle)
        forwards = self._forwards(target)
        sync = self._sync_plan(target, box)
        port = int(old.get("ssh", {}).get("port") or 0)
        if not port or not _port_free("127.0.0.1", port, "tcp"):
            port = _free_port("127.0.0.1")
        self._configure(
            target, box, handle, ssh_port=port, forwards=forwards, sync=sync, old=old, retry_locked=LOCK_RETRY_SECONDS
        )
        return True

    # -- private networks (contract.Networks) ----------------------------------------------------
    @contextlib.contextmanager
    def _network_lock(self) -> Iterator[None]:
        """One machine's network choices at a time, across threads (parallel `up`: flock locks of
        separate open()s exclude each other) and processes (other projects share host-only
        interfaces and the record of the ones devenv made)."""
        self.home().mkdir(parents=True, exist_ok=True)
        with open(self.home() / ".networks.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    @staticmethod
    def _is_hostonly(att: Attachment) -> bool:
        """A network the host is on: one with a subnet that is not `internal` (Vagrant's
        private_network). The others are internal networks: no host side at all."""
        return bool(att.network.subnet) and not att.network.internal

    @staticmethod
    def _mac(vm: str, network: str) -> str:
        """A NIC's MAC address, stable for the VM and network (the guest's network-config matches
        it): VirtualBox's own prefix 08:00:27, unicast."""
        return "080027" + hashlib.sha256(f"{vm}/{network}".encode()).hexdigest()[:6].upper()

    def _hostonlyifs(self) -> list[dict[str, str]]:
        return parse_hostonlyifs(self._run("list", "hostonlyifs").stdout)

    def _hostonly_record(self) -> dict[str, dict]:
        """The host-only interfaces devenv made, by name, with the address and mask it gave them."""
        try:
            data = json.loads((self.home() / HOSTONLY_RECORD).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if safe_handle(k) and isinstance(v, dict)}

    def _save_hostonly_record(self, record: dict[str, dict]) -> None:
        path = self.home() / HOSTONLY_RECORD
        if not record:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, path)

    @staticmethod
    def _made_by_devenv(iface: dict[str, str], record: dict[str, dict]) -> bool:
        # The name alone is not enough: VirtualBox gives a new interface the lowest free vboxnetN
        # (and, on Linux, a GUID made from it), so a removed one's name comes back on another.
        rec = record.get(iface.get("Name", ""))
        return rec is not None and (rec.get("ip"), rec.get("mask")) == (
            iface.get("IPAddress"),
            iface.get("NetworkMask"),
        )

    def _hostonly_match(self, network: str, subnet: str, interfaces: list[dict[str, str]]) -> str | None:
        """The host-only interface that is network ``network`` (``subnet``): the one whose address
        is the subnet's first host with the subnet's mask (whoever made it, as Vagrant reuses it).
        None when there is none; an error when another interface overlaps the subnet."""
        net = ipaddress.IPv4Network(subnet)
        gateway, mask = str(next(net.hosts())), str(net.netmask)
        for iface in interfaces:
            if (iface.get("IPAddress"), iface.get("NetworkMask")) == (gateway, mask) and safe_handle(iface.get("Name")):
                return iface["Name"]
        record = self._hostonly_record()
        for iface in interfaces:
            try:
                theirs = ipaddress.IPv4Network(f"{iface.get('IPAddress')}/{iface.get('NetworkMask')}", strict=False)
            except ValueError:
                continue  # no IPv4 address configured
            if not theirs.overlaps(net):
                continue
            name, ip = iface.get("Name", "?"), iface.get("IPAddress")
            where = f"the host-only interface {name} ({ip}/{theirs.prefixlen})"
            if self._made_by_devenv(iface, record):
                raise MachineStateError(
                    f"network '{network}' ({subnet}) collides with {where}, which devenv made for a network on "
                    "another subnet",
                    hint=f"give [networks.{network}] a subnet that overlaps no other (`VBoxManage list hostonlyifs`), "
                    "or `devenv destroy` the machines on that one (this project's, when its subnet changed)",
                )
            share = (
                f'subnet = "{theirs}" (to share {name}), '
                if ip == str(next(theirs.hosts(), None)) and theirs.prefixlen <= 29
                else ""
            )
            raise MachineStateError(
                f"network '{network}' ({subnet}) collides with {where}, which devenv did not make: "
                f"devenv gives the host {gateway}/{net.prefixlen} there",
                hint=f"give [networks.{network}] {share}a subnet no host-only interface overlaps "
                f"(`VBoxManage list hostonlyifs`), or reconfigure or remove {name} if nothing needs it",
            )
        return None

    def _ensure_hostonly(self, network: str, subnet: str) -> str:
        """The host-only interface of ``subnet``, made when there is none (under the network lock).

        No DHCP server: every address on it is fixed (the guest is configured statically, as
        Vagrant does for a private_network with an ip)."""
        found = self._hostonly_match(network, subnet, self._hostonlyifs())
        if found is not None:
            return found
        net = ipaddress.IPv4Network(subnet)
        gateway, mask = str(next(net.hosts())), str(net.netmask)
        self.reporter.info(None, f"making a VirtualBox host-only interface for network '{network}' ({subnet})")
        r = self._run("hostonlyif", "create", check=False, timeout=120)
        made = re.search(r"Interface '([^']+)' was successfully created", r.stdout)
        if r.returncode != 0 or made is None or not safe_handle(made.group(1)):
            err = self._error(("hostonlyif", "create"), r)
            if r.returncode != 0 and not isinstance(err, CommandFailed):
                raise err  # VirtualBox itself is unusable (no VBoxSVC, no vboxdrv): that error says so
            detail = self._first_error(r) if r.returncode else "its output names no interface"
            raise BackendUnavailable(
                f"VirtualBox cannot make a host-only interface for network '{network}' ({subnet}): {detail}",
                hint="VirtualBox's vboxnetadp kernel module must be loaded (`sudo /sbin/vboxconfig` builds and "
                "loads it); `VBoxManage hostonlyif create` shows the details",
            )
        name = made.group(1)
        r = self._run("hostonlyif", "ipconfig", name, "--ip", gateway, "--netmask", mask, check=False)
        if r.returncode != 0:
            self._run("hostonlyif", "remove", name, check=False)  # devenv's, unconfigured: never left behind
            if "E_ACCESSDENIED" in r.stderr or "Access denied" in r.stderr:
                raise BackendUnavailable(
                    f"VirtualBox refuses the host-only network {subnet} for network '{network}': since 6.1.28 "
                    "host-only addresses must lie in the ranges /etc/vbox/networks.conf allows (without that "
                    "file: only 192.168.56.0/21)",
                    hint=f"add the line `* {subnet}` to /etc/vbox/networks.conf (as root; a `*` line lists every "
                    f"range allowed), or give [networks.{network}] a subnet inside 192.168.56.0/21",
                )
            raise self._error(("hostonlyif", "ipconfig"), r)
        record = self._hostonly_record()
        record[name] = {"ip": gateway, "mask": mask}
        self._save_hostonly_record(record)
        return name

    def _remove_unused_hostonly(self) -> list[str]:
        """Remove the host-only interfaces devenv made that no registered VM (devenv's or anyone's)
        has a NIC on any more (under the network lock). Interfaces devenv did not make are never
        touched; one reconfigured since devenv made it is no longer devenv's."""
        record = self._hostonly_record()
        if not record:
            return []
        live = {i.get("Name"): i for i in self._hostonlyifs()}
        used: set[str] = set()
        for vm in parse_list(self._run("list", "vms").stdout):
            try:
                info = self._info(vm) or {}
            except DevenvError:
                return []  # a VM that cannot be read might use any of them: keep them all
            used.update(
                info.get(f"hostonlyadapter{n}", "") for n in range(1, MAX_NICS + 1) if info.get(f"nic{n}") == "hostonly"
            )
        removed, keep = [], {}
        for name, rec in record.items():
            iface = live.get(name)
            if iface is None or not self._made_by_devenv(iface, record):
                continue  # gone, or someone reconfigured it: not devenv's to remove
            if name in used:
                keep[name] = rec
                continue
            r = self._run("hostonlyif", "remove", name, check=False)
            if r.returncode == 0:
                removed.append(name)
            else:
                keep[name] = rec
                self.reporter.warn(
                    f"cannot remove the host-only interface {name}: {self._error(('hostonlyif', 'remove'), r)}"
                )
        self._save_hostonly_record(keep)
        return removed

    def _peer_networks(self, target: Target) -> list[dict]:
        """What this project's other machines recorded about their networks (their devenv/meta,
        with the machine's name), so a machine takes the subnet its peers chose for a network
        without one, and no address a peer holds. The driver sees one machine at a time: its
        peers' records are what it knows of the others."""
        prefix = f"devenv-{target.project_id}-"
        out = []
        for vm in parse_list(self._run("list", "vms").stdout):
            if not vm.startswith(prefix) or vm == target.resource_name:
                continue
            meta = self.metadata(vm) or {}
            if meta.get("project") != target.project_id or meta.get("root", str(target.project_root)) != str(
                target.project_root
            ):
                continue
            for n in meta.get("networks") or []:
                if isinstance(n, dict) and isinstance(n.get("name"), str):
                    out.append({**n, "machine": meta.get("machine", vm)})
        return out

    def _plan_networks(self, target: Target, vm: str, old: dict | None) -> list[dict]:
        """Each private network the machine joins, as its NIC is made and its metadata records it:
        name, nic, kind (hostonly/intnet), adapter or intnet, subnet, ip (assigned: devenv chose
        it), mac. Under the network lock; addresses are settled before any interface is made."""
        m = target.machine
        if not m.networks:
            return []
        peers = self._peer_networks(target)
        interfaces = self._hostonlyifs()
        previous = {n.get("name"): n for n in (old or {}).get("networks", []) if isinstance(n, dict)}
        plan = []
        for i, att in enumerate(m.networks):
            subnet = att.network.subnet or self._intnet_subnet(target, att, peers, previous.get(att.name), interfaces)
            ip = self._address(m.name, att, subnet, peers, previous.get(att.name))
            entry: dict = {"name": att.name, "nic": i + 2, "subnet": subnet, "ip": ip, "assigned": att.ip is None}
            if self._is_hostonly(att):
                entry.update(kind="hostonly")
            else:
                entry.update(kind="intnet", intnet=f"devenv-{target.project_id}-{att.name}")
            entry["mac"] = self._mac(vm, att.name)
            plan.append(entry)
        for entry in plan:
            if entry["kind"] == "hostonly":
                entry["adapter"] = self._ensure_hostonly(entry["name"], entry["subnet"])
        return plan

    def _intnet_subnet(
        self, target: Target, att: Attachment, peers: list[dict], previous: dict | None, interfaces: list[dict]
    ) -> str:
        """The subnet of a network the Devfile gives none (the project's default network, say).

        Such a network is an internal network, not a host-only one: nobody wrote it, so it must
        not need host setup that can fail (VirtualBox 7 allows host-only addresses only in
        192.168.56.0/21 unless /etc/vbox/networks.conf says more) or leave interfaces on the host;
        the host reaches machines through their NAT forwards anyway. The subnet is the one the
        project's machines already use for it, else a /24 of INTNET_POOL chosen by a hash of the
        project and network (so each project's pick is stable), skipping subnets of host-only
        interfaces and of the project's other networks (the guest would route those here)."""
        for p in peers:
            if p["name"] == att.name and p.get("subnet"):
                return str(p["subnet"])
        if previous and previous.get("kind") == "intnet" and previous.get("subnet"):
            return str(previous["subnet"])
        avoid = [ipaddress.IPv4Network(a.network.subnet) for a in target.machine.networks if a.network.subnet]
        avoid += [ipaddress.IPv4Network(p["subnet"]) for p in peers if p.get("subnet")]
        for iface in interfaces:
            with contextlib.suppress(ValueError):
                avoid.append(
                    ipaddress.IPv4Network(f"{iface.get('IPAddress')}/{iface.get('NetworkMask')}", strict=False)
                )
        pool = ipaddress.IPv4Network(INTNET_POOL)
        count = 2 ** (24 - pool.prefixlen)
        start = _digest(f"{target.project_id}/{att.name}") % count
        for k in range(count):
            candidate = ipaddress.IPv4Network((int(pool.network_address) + ((start + k) % count) * 256, 24))
            if not any(candidate.overlaps(a) for a in avoid):
                return str(candidate)
        raise MachineStateError(
            f"no free /24 in {INTNET_POOL} for network '{att.name}'",
            hint=f'give [networks.{att.name}] a subnet, e.g. subnet = "10.123.0.0/24"',
        )

    @staticmethod
    def _address(machine: str, att: Attachment, subnet: str, peers: list[dict], previous: dict | None) -> str:
        """The machine's address on the network: the Devfile's ``ip``, else the one it had, else
        one devenv assigns. Assigned addresses come from the upper half of the subnet, starting at
        a hash of the machine name and skipping what the project's other machines hold: the driver
        sees only its own machine, so the fixed addresses other machines' Devfile entries name are
        unknown until those machines exist, and people write low ones (.10, .11, ...)."""
        net = ipaddress.IPv4Network(subnet)
        on_it = [p for p in peers if p["name"] == att.name and p.get("ip")]
        taken = {str(p["ip"]): str(p["machine"]) for p in on_it}
        if att.ip:
            holder = next((p for p in on_it if p["ip"] == att.ip), None)
            if holder is not None:
                who = holder["machine"]
                how = " (devenv assigned it there)" if holder.get("assigned") else ""
                raise MachineStateError(
                    f"{att.ip} on network '{att.name}' is already machine '{who}'s{how}",
                    hint=f"give machine '{who}' another fixed ip on '{att.name}' (then `devenv reload {who}`), "
                    "or this machine another one",
                )
            return att.ip
        if previous and previous.get("subnet") == subnet and previous.get("ip") and previous["ip"] not in taken:
            return str(previous["ip"])
        hosts = net.num_addresses - 2  # without the network and broadcast addresses
        lower = hosts // 2  # the gateway (the first host) is in the lower half
        count = hosts - lower
        start = _digest(machine) % count
        for k in range(count):
            addr = str(net.network_address + 1 + lower + (start + k) % count)
            if addr not in taken:
                return addr
        raise MachineStateError(
            f"network '{att.name}' ({subnet}) has no free address left for machine '{machine}'",
            hint=f"give the machine a fixed ip on '{att.name}', or the network a larger subnet",
        )

    def host_endpoint(self, handle: str) -> HostEndpoint:
        """User-mode networking (the first NIC) takes 10.0.2.2 to the host's 127.0.0.1: the
        host's service listens on loopback only, reachable from this host's VMs and nothing else."""
        return HostEndpoint("127.0.0.1", "10.0.2.2")

    def addresses(self, handle: str) -> dict[str, str]:
        """The machine's address per private network, as its metadata records them."""
        out = {}
        for n in (self.metadata(handle) or {}).get("networks") or []:
            if isinstance(n, dict) and isinstance(n.get("name"), str) and isinstance(n.get("ip"), str):
                out[n["name"]] = n["ip"]
        return out

    @staticmethod
    def _hostonly_nets(meta: dict) -> list[dict]:
        return [n for n in meta.get("networks") or [] if isinstance(n, dict) and n.get("kind") == "hostonly"]

    def _ensure_adapters(self, handle: str, meta: dict) -> dict:
        """Before a stopped machine starts: a host-only interface it is on that has gone since
        (removed by hand, a VirtualBox reinstall) is found or made again, as at create: VirtualBox
        refuses to start a VM on a host-only interface that does not exist."""
        existing = {i.get("Name") for i in self._hostonlyifs()}
        if all(n.get("adapter") in existing for n in self._hostonly_nets(meta)):
            return meta
        with self._network_lock():
            existing = {i.get("Name") for i in self._hostonlyifs()}
            args = ["modifyvm", handle]
            networks = []
            for n in meta["networks"]:
                if isinstance(n, dict) and n.get("kind") == "hostonly" and n.get("adapter") not in existing:
                    n = {**n, "adapter": self._ensure_hostonly(n["name"], n["subnet"])}
                    args += [f"--hostonlyadapter{n['nic']}", n["adapter"]]
                networks.append(n)
            self._run(*args, retry_locked=LOCK_RETRY_SECONDS)
            meta = {**meta, "networks": networks}
            self._run("setextradata", handle, KEY_META, json.dumps(meta, sort_keys=True, separators=(",", ":")))
        return meta

    def find(self, target: Target) -> str | None:
        """The machine's VM by its name, when it is complete (create replaces a half-made one).

        A handle from .devenv/ is always a complete VM: the project records it after create().
        """
        name = target.resource_name
        return name if self.owns(name, target) is Ownership.OURS else None

    def owns(self, handle: str, target: Target) -> Ownership:
        """OURS only for a complete VM whose extradata names this project, machine and (when
        recorded) real project root."""
        if not safe_handle(handle):  # never an option or odd word on VBoxManage's command line
            return Ownership.FOREIGN
        ed = self._extradata(handle)
        if ed is None:
            return Ownership.GONE
        if KEY_META not in ed or ed.get(KEY_PROJECT) != target.project_id or ed.get(KEY_MACHINE) != target.name:
            return Ownership.FOREIGN
        # The project id is a short hash a hostile folder name can collide with: the real root
        # recorded in the metadata decides. A VM without one was made by an older devenv.
        try:
            meta = json.loads(ed[KEY_META])
        except ValueError:
            meta = None
        root = meta.get("root") if isinstance(meta, dict) else None
        if isinstance(root, str) and root != str(target.project_root):
            return Ownership.FOREIGN
        return Ownership.OURS

    def wait_ssh(self, handle: str, timeout: float) -> None:
        """Until sshd's banner comes through the forward (VirtualBox's NAT accepts connections itself)."""
        meta = self.metadata(handle) or {}
        port = int(meta.get("ssh", {}).get("port", 0))
        machine = meta.get("machine", handle)
        deadline = time.monotonic() + timeout
        next_state_check = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_state_check:
                st = self._vmstate(handle)
                if st not in _RUNNING:
                    raise MachineStateError(
                        f"machine '{machine}' stopped while booting (VirtualBox state: {st or 'gone'})",
                        hint=f"its log: `VBoxManage showvminfo {handle} --log 0`",
                    )
                next_state_check = time.monotonic() + 2
            if ssh_banner(port):
                return
            time.sleep(0.25)
        raise MachineStateError(
            f"machine '{machine}' did not bring up SSH within {timeout:.0f}s",
            hint="a slow boot may need a larger boot_timeout in [machines.NAME.virtualbox]; "
            f"its log: `VBoxManage showvminfo {handle} --log 0`",
        )

    def _startvm(self, handle: str, meta: dict) -> None:
        if self._hostonly_nets(meta) and self._vmstate(handle) in ("poweroff", "aborted"):
            meta = self._ensure_adapters(handle, meta)  # (a saved VM keeps its NICs: it cannot change them)
        for f in meta.get("ports", []):
            if not _port_free(f["host_ip"], int(f["host"]), f["protocol"]):
                raise PortConflict(
                    f"host port {f['host_ip']}:{f['host']}/{f['protocol']} (for guest port {f['guest']}) "
                    "is already in use",
                    hint="stop what uses it, or change `ports` in the Devfile and run `devenv reload`",
                )
        kind = "gui" if meta.get("ssh", {}).get("gui") else "headless"
        self._run("startvm", handle, "--type", kind, retry_locked=LOCK_RETRY_SECONDS)

    def _free_ssh_port(self, handle: str, meta: dict) -> dict:
        """A stopped machine whose SSH port was taken meanwhile gets another one (devenv chose it)."""
        ssh = meta.get("ssh", {})
        port = int(ssh.get("port", 0))
        if not port or _port_free("127.0.0.1", port, "tcp"):
            return meta
        from devenv.drivers.vm.identity import MachineKeys

        new = _free_port("127.0.0.1")
        self.reporter.info(meta.get("machine"), f"SSH port {port} is taken: forwarding {new} instead")
        self._run("modifyvm", handle, "--natpf1", "delete", "ssh", "--natpf1", f"ssh,tcp,127.0.0.1,{new},,22")
        MachineKeys(Path(ssh["keys"])).pin("127.0.0.1", new)
        meta = {**meta, "ssh": {**ssh, "port": new}}
        self._run("setextradata", handle, KEY_META, json.dumps(meta, sort_keys=True, separators=(",", ":")))
        return meta

    def start(self, handle: str, *, timeout: float | None = None) -> None:
        meta = self.metadata(handle)
        if meta is None:
            raise MachineStateError("the VM is gone or half-made", hint="run `devenv up` to recreate it")
        st = self._vmstate(handle)
        if st == "paused":
            self._run("controlvm", handle, "resume")
        elif st not in _RUNNING:
            if st in ("poweroff", "aborted", "saved", "aborted-saved"):
                meta = self._free_ssh_port(handle, meta)
            self._startvm(handle, meta)
        self.wait_ssh(handle, float(timeout or meta.get("ssh", {}).get("boot_timeout", 180)))

    def stop(self, handle: str, *, force: bool = False, timeout: float | None = None) -> None:
        st = self._vmstate(handle)
        if st is None or (st not in _RUNNING and st != "paused"):
            return
        if timeout is None:
            timeout = float((self.metadata(handle) or {}).get("ssh", {}).get("halt_timeout", 60))
        if not force and st == "running":
            self._run("controlvm", handle, "acpipowerbutton")
            deadline = time.monotonic() + timeout
            while True:
                st = self._vmstate(handle)
                if st is None or st not in _RUNNING:
                    return
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(0.5, max(0.05, timeout / 10)))
            self.reporter.warn(f"{handle}: no clean shutdown after {timeout:g}s: powering off")
        r = self._run("controlvm", handle, "poweroff", check=False)
        if r.returncode != 0 and self._vmstate(handle) in (*_RUNNING, "paused"):
            raise self._error(("controlvm", handle, "poweroff"), r)

    def destroy(self, handle: str) -> None:
        st = self._vmstate(handle)
        if st is not None:
            if st in _RUNNING or st == "paused":
                self._run("controlvm", handle, "poweroff", check=False)
            self._run("unregistervm", handle, "--delete", retry_locked=LOCK_RETRY_SECONDS)
        shutil.rmtree(self.storage_dir(handle), ignore_errors=True)
        # Its NICs went with the VM; a host-only interface devenv made for it goes with the last
        # VM on it (even one a crashed create left behind, recorded but on no VM).
        if self._hostonly_record():
            with self._network_lock():
                self._remove_unused_hostonly()

    def state(self, handle: str) -> MachineState:
        st = self._vmstate(handle)
        if st is None:
            return MachineState.NOT_CREATED
        if st in _RUNNING:
            return MachineState.RUNNING
        if st in _SUSPENDED:
            return MachineState.SUSPENDED
        return MachineState.STOPPED  # poweroff, aborted, teleported

    def sweep(self, project_id: str, root: Path | None = None) -> list[str]:
        """Remove the project's VMs, found by their extradata (devenv's VMs are named devenv-*).

        With ``root``, a VM whose metadata records another folder (a colliding short id) stays."""
        try:
            listing = self._run("list", "vms").stdout
        except BackendUnavailable:
            return []
        removed = []
        for name in parse_list(listing):
            if not name.startswith("devenv-") or name.startswith("devenv-base-"):
                continue
            ed = self._extradata(name)
            if ed is None:
                continue
            ours = ed.get(KEY_PROJECT) == project_id
            if ours and root is not None:
                try:
                    meta = json.loads(ed.get(KEY_META, "{}"))
                except ValueError:
                    meta = None
                recorded = meta.get("root") if isinstance(meta, dict) else None
                ours = not isinstance(recorded, str) or recorded == str(root)
            half_made = KEY_PROJECT not in ed and name.startswith(f"devenv-{project_id}-")
            if ours or half_made:
                self.destroy(name)
                removed.append(name)
        if not removed and self._hostonly_record():
            with self._network_lock():  # (destroy did it otherwise) interfaces a crashed `up` left on no VM
                removed += self._remove_unused_hostonly()
        return removed

    # -- optional roles ------------------------------------------------------------------------
    def suspend(self, handle: str) -> None:
        self._run("controlvm", handle, "savestate")

    def resume(self, handle: str) -> None:
        meta = self.metadata(handle) or {}
        if self._vmstate(handle) == "paused":
            self._run("controlvm", handle, "resume")
        else:
            self._startvm(handle, self._free_ssh_port(handle, meta))
        self.wait_ssh(handle, 60)

    def _snapshot_names(self, vm: str) -> list[str]:
        r = self._run("snapshot", vm, "list", "--machinereadable", check=False)
        if r.returncode != 0:
            if "does not have any snapshots" in r.stdout + r.stderr:
                return []
            raise self._error(("snapshot", vm, "list"), r)
        return snapshot_names(r.stdout)

    def snapshot_list(self, handle: str) -> list[str]:
        return sorted(self._snapshot_names(handle))

    def _require_snapshot(self, handle: str, name: str) -> None:
        if name not in self._snapshot_names(handle):
            raise UsageError(f"no snapshot named '{name}'", hint="`devenv snapshot list NAME` shows the snapshots")

    def snapshot_save(self, handle: str, name: str) -> None:
        # VirtualBox allows two snapshots of one name; devenv names them uniquely.
        if name in self._snapshot_names(handle):
            raise UnsupportedOperation(
                f"snapshot '{name}' already exists", hint="delete it first or choose another name"
            )
        self._run("snapshot", handle, "take", name, "--description", "devenv snapshot")

    def snapshot_restore(self, handle: str, name: str) -> None:
        self._require_snapshot(handle, name)
        was_running = self._vmstate(handle) in (*_RUNNING, "paused")
        if was_running:
            self._run("controlvm", handle, "poweroff")
        self._run("snapshot", handle, "restore", name, retry_locked=LOCK_RETRY_SECONDS)
        # A snapshot of a running machine comes back "saved" (with its memory): it runs again.
        if was_running or self._vmstate(handle) == "saved":
            self._startvm(handle, self.metadata(handle) or {})
            self.wait_ssh(handle, 60)

    def snapshot_delete(self, handle: str, name: str) -> None:
        self._require_snapshot(handle, name)
        self._run("snapshot", handle, "delete", name)
