"""`devenv doctor`: what this machine has for the Devfile, with a fix for each miss."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devenv.drivers.hostports import port_free
from devenv.errors import DevenvError

if TYPE_CHECKING:
    from devenv.model.devfile import Machine


@dataclass
class Check:
    name: str
    status: str  # "ok" | "missing" | "warn"
    detail: str
    fix: str = ""
    needed: bool = False  # the Devfile needs it: a miss makes doctor fail

    def as_dict(self) -> dict:
        return asdict(self)


def _engine(name: str, needed: bool, machine=None) -> Check:
    """The engine a driver uses (the one `machine` names, e.g. its own libvirt URI)."""
    from devenv.plugins import get_driver

    try:
        driver = get_driver(name)
        driver.check_available(machine)
    except DevenvError as exc:
        return Check(name, "missing", exc.message, exc.hint or "", needed)
    return Check(name, "ok", driver.describe_engine(machine), "", needed)


def _tool(name: str, cmd: list[str], fix: str, needed: bool, what: str, path: str | None = None) -> Check:
    """A host command; `path` when devenv finds it elsewhere than on PATH (as the feature will)."""
    path = path or shutil.which(cmd[0])
    if path is None:
        return Check(name, "missing", f"{cmd[0]} not found ({what})", fix, needed)
    try:
        out = subprocess.run([path, *cmd[1:]], capture_output=True, text=True, timeout=20)
        version = (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    return Check(name, "ok", f"{path} {version}".strip(), "", needed)


def _package_cache() -> Check:
    # Not `apt-cacher-ng --version`: that starts a daemon on port 3142.
    path = shutil.which("apt-cacher-ng", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        return Check(
            "apt-cacher-ng",
            "warn",
            "not found (the package cache: without it apt in every machine fetches every package again)",
            "apt-get install apt-cacher-ng",
        )
    return Check("apt-cacher-ng", "ok", f"{path} (the package cache every machine shares)")


def _ansible_playbook() -> str | None:
    """Where the ansible provisioner will find it: beside devenv's Python (its venv) first."""
    from devenv.errors import DevenvError
    from devenv.provisioners.ansible import find_ansible_playbook

    try:
        return find_ansible_playbook()
    except DevenvError:
        return None


def _libvirt_checks(machines: list) -> list[Check]:
    """One check per libvirt the Devfile's machines use (qemu:///session, a remote URI, ...)."""
    per_uri: dict[str | None, Machine] = {}
    for m in machines:
        if m.driver == "libvirt":
            per_uri.setdefault(m.driver_options().get("uri"), m)
    if not per_uri:
        return [_engine("libvirt", False)]
    checks = [_engine("libvirt", True, m) for m in per_uri.values()]
    if len(checks) > 1:
        for c, uri in zip(checks, per_uri, strict=True):
            c.name = f"libvirt {uri or 'default'}"
    return checks


def run_checks(project=None) -> list[Check]:
    from devenv.drivers.libvirt.driver import hardware_virt_usable
    from devenv.state import data_dir

    machines = list(project.devfile.machines.values()) if project else []
    drivers = {m.driver for m in machines}
    steps = {s.type for m in machines for s in m.provision}
    checks = [
        _engine("docker", "docker" in drivers),
        *_libvirt_checks(machines),
    ]
    if hardware_virt_usable():
        checks.append(Check("hardware virtualisation", "ok", "vmx/svm and /dev/kvm: VMs run with KVM"))
    else:
        checks.append(
            Check(
                "hardware virtualisation",
                "warn",
                "no vmx/svm or no usable /dev/kvm: VMs run in software emulation (slow)",
                "enable VT-x/AMD-V in the firmware, or nested virtualisation on a cloud host",
                False,
            )
        )
    checks += [
        _tool(
            "VBoxManage",
            ["VBoxManage", "--version"],
            "install VirtualBox 6.1 or 7.x from virtualbox.org",
            "virtualbox" in drivers,
            "VirtualBox driver",
        ),
        _tool(
            "vagrant",
            ["vagrant", "--version"],
            "apt-get install --no-install-recommends vagrant",
            "vagrant" in drivers,
            "Vagrant bridge",
        ),
        _tool(
            "ansible-playbook",
            ["ansible-playbook", "--version"],
            "pip install 'devenv[ansible]'",
            "ansible" in steps,
            "ansible provisioner",
            path=_ansible_playbook(),
        ),
        _tool("ssh", ["ssh", "-V"], "apt-get install openssh-client", bool(drivers - {"docker"}), "SSH to VMs"),
        _tool(
            "debootstrap", ["debootstrap", "--version"], "apt-get install debootstrap", False, "building Debian boxes"
        ),
    ]
    checks.append(_package_cache())
    base = data_dir()
    probe = base if base.exists() else Path.home()
    free = shutil.disk_usage(probe).free
    gib = free / 1024**3
    if gib < 1:
        checks.append(Check("disk", "missing", f"{gib:.1f} GiB free under {probe}", "free some disk space", True))
    elif gib < 5:
        checks.append(
            Check(
                "disk",
                "warn",
                f"{gib:.1f} GiB free under {probe} (boxes take 0.2-1 GiB each)",
                "free some disk space or `devenv box prune`",
            )
        )
    else:
        checks.append(Check("disk", "ok", f"{gib:.0f} GiB free under {probe}"))
    if project is not None:
        ours = set()
        try:
            for row in project.status():
                ours.update(row.ports)
        except DevenvError:
            pass
        for m in machines:
            for p in m.ports:
                if p.host is None:
                    continue
                binding = f"{p.host_ip}:{p.host}/{p.protocol}"
                mine = any(x.startswith(f"{p.host_ip}:{p.host} ->") for x in ours)
                if mine or port_free(p.host_ip, p.host, p.protocol):
                    checks.append(
                        Check(
                            f"port {binding}",
                            "ok",
                            f"free for {m.name}" if not mine else f"in use by {m.name} itself",
                            "",
                            True,
                        )
                    )
                else:
                    checks.append(
                        Check(
                            f"port {binding}",
                            "missing",
                            f"in use by another program ({m.name} needs it)",
                            "stop what uses it (`ss -ltnp`), change the port, or set auto_correct = true",
                            True,
                        )
                    )
    return checks
