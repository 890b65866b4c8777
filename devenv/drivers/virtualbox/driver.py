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

VirtualBox cannot run on our machines: this driver is verified against a scripted VBoxManage
stand-in (tests/fakes/VBoxManage), not yet against a real VirtualBox.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from devenv.boxes import store
from devenv.contract import QUIET, BoxArtifact, Features, MachineState, Ownership, Reporter, Target, safe_handle
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


def snapshot_names(text: str) -> list[str]:
    """`snapshot VM list --machinereadable`: SnapshotName, SnapshotName-1, SnapshotName-1-1, ..."""
    return [v for k, v in parse_machinereadable(text).items() if re.fullmatch(r"SnapshotName(-\d+)*", k)]


class VirtualBoxDriver(VmMetadataMixin):
    gone_message = "the VM is gone or half-made"

    name: ClassVar[str] = "virtualbox"
    features: ClassVar[Features] = Features(
        snapshots=True, suspend=True, apply_settings=True, copy_sync=True, env_at_create=False
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

    def _error(self, args: tuple[str, ...], r: subprocess.CompletedProcess) -> DevenvError:
        """VBoxManage's failure as a devenv error (the first error line is the useful one)."""
        text = f"{r.stderr}\n{r.stdout}"
        errors = [
            line.split("error:", 1)[1].strip()
            for line in r.stderr.splitlines()
            if "error:" in line and not line.split("error:", 1)[1].strip().startswith(("Details:", "Context:"))
        ]
        first = errors[0] if errors else (r.stderr.strip() or r.stdout.strip() or f"exit code {r.returncode}")
        first = first.splitlines()[0]
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
        return problems

    # -- boxes ---------------------------------------------------------------------------------
    def preflight(self, target: Target) -> None:
        check_host_addresses(target)  # VirtualBox's NAT forwards bind on this host

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
        """Hardware, NAT forwards, seed DVD, shared folders, then the devenv record (last)."""
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
        folder = self.storage_dir(name)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        seed_iso = folder / "seed.iso"
        seed.write_iso(
            seed_iso,
            {
                "meta-data": seed.meta_data(f"{name}-{int(time.time())}", m.hostname),
                "user-data": seed.user_data(
                    hostname=m.hostname,
                    authorized_key=keys.client_pub,
                    host_key_private=keys.host_private,
                    host_key_public=keys.host_pub,
                ),
            },
        )
        info = self._info(name) or {}
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
        self._run(*args, retry_locked=retry_locked)
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
