"""Provider blocks (`config.vm.provider :virtualbox do |vb| ... end`) -> a machine's cpus and
memory, and the notes on what else they set.

Every provider says memory and CPUs in its own words: `vb.memory`, `vb.customize ["modifyvm",
:id, "--memory", 2048]`, `v.vmx["memsize"]` (VMware), `prl.customize ["set", :id, "--memsize",
...]` (Parallels), `libvirt.memory`, `h.maxmemory` (Hyper-V), `d.create_args = ["--memory",
...]` (Docker), `qe.memory = "4G"` (vagrant-qemu). The target driver's own provider wins; else
the first provider the Vagrantfile declares, which is the one Vagrant prefers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from devenv.vagrantfile.context import shown

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.I)
_UNIT_MIB = {"": 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0 * 1024}
# Settings some provider section handles elsewhere (the docker provider's image becomes the box).
DOCKER_MAPPED = ("image", "cmd", "ports", "volumes", "env", "build_dir")


def mib(value: Any) -> int | None:
    """A provider's memory in MiB: a bare number is MiB, as every provider takes it."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value) if value > 0 else None
    m = _SIZE.fullmatch(str(value))
    if not m:
        return None
    n = float(m.group(1)) * _UNIT_MIB[m.group(2).lower()]
    return int(n) if n >= 1 else None


def cpus(value: Any) -> int | float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        n = float(value)
    except (TypeError, ValueError):
        return None
    if n <= 0:
        return None
    return int(n) if n == int(n) else n


@dataclass
class Resources:
    memory: tuple[int, dict] | None = None  # (MiB, where it was set)
    cpus: tuple[int | float, dict] | None = None
    rest: list[str] = field(default_factory=list)  # what else the block sets, as a note shows it

    def take_memory(self, value: Any, rec: dict) -> bool:
        n = mib(value)
        if n is None or self.memory is not None:
            return False
        self.memory = (n, rec)
        return True

    def take_cpus(self, value: Any, rec: dict) -> bool:
        n = cpus(value)
        if n is None or self.cpus is not None:
            return False
        self.cpus = (n, rec)
        return True


def resources(name: str, rec: dict, v1_customize: list[dict] | None = None, skip: tuple = ()) -> Resources:
    """The cpus and memory one provider's block sets, and the rest of it for a note (but for the
    settings in ``skip``, carried over elsewhere)."""
    out = Resources()
    for k, r in (rec.get("settings") or {}).items():
        v = r.get("value")
        if k in skip:
            continue
        if k in ("memory", "maxmemory", "memsize") and out.take_memory(v, r):
            continue
        if k in ("cpus", "cpu", "vcpus", "smp") and out.take_cpus(v, r):
            continue
        if k == "vmx" and isinstance(v, dict):
            _vmx(v, r, out)
        elif name == "docker" and k == "create_args" and isinstance(v, list):
            _create_args([str(a) for a in v], r, out)
        else:
            out.rest.append(f"{k} = {shown(v)}")
    calls = rec.get("calls") or []
    customize = [c for c in calls if c.get("name") == "customize"]
    v1 = [{**c, "args": [c.get("args")]} for c in v1_customize or []]
    for c in [*customize, *v1]:
        _customize(c, out)
    out.rest += [f"{c['name']} {shown(c.get('args'))}" for c in calls if c.get("name") != "customize"]
    return out


def _vmx(vmx: dict, rec: dict, out: Resources) -> None:
    for k, v in vmx.items():
        if k == "memsize" and out.take_memory(v, rec):
            continue
        if k == "numvcpus" and out.take_cpus(v, rec):
            continue
        out.rest.append(f'vmx["{k}"] = {shown(v)}')


def _create_args(args: list[str], rec: dict, out: Resources) -> None:
    i = 0
    while i < len(args):
        flag, _, inline = args[i].partition("=")
        value = inline if inline else (args[i + 1] if i + 1 < len(args) else "")
        width = 1 if inline else 2
        if flag in ("--memory", "-m") and out.take_memory(value, rec):
            i += width
        elif flag == "--cpus" and out.take_cpus(value, rec):
            i += width
        else:
            out.rest.append(f"create_args {args[i]}")
            i += 1


def _customize(call: dict, out: Resources) -> None:
    """`vb.customize ["modifyvm", :id, "--memory", 2048, "--cpus", 2]` (also with an event first:
    `vb.customize "pre-boot", [...]`), `prl.customize ["set", :id, "--memsize", 1024]`."""
    args = call.get("args") or []
    cmd = args[-1] if args and isinstance(args[-1], list) else args
    words = [str(x) for x in cmd] if isinstance(cmd, list) else [str(cmd)]
    left: list[str] = []
    i = 0
    while i < len(words):
        nxt = words[i + 1] if i + 1 < len(words) else None
        if words[i] in ("--memory", "--memsize") and nxt is not None and out.take_memory(nxt, call):
            i += 2
        elif words[i] == "--cpus" and nxt is not None and out.take_cpus(nxt, call):
            i += 2
        else:
            left.append(words[i])
            i += 1
    if [w for w in left if w not in ("modifyvm", "set", "id", ":id")]:
        out.rest.append(f"customize {shown(words)}")


def carried_provider(vm: dict, driver: str) -> str | None:
    """The provider whose settings are carried over: the target driver's own when the Vagrantfile
    declares it, else the first it declares (the one Vagrant prefers when it is usable); for a VM,
    the first VM provider (a container's limits are not a VM's size)."""
    order = provider_order(vm, driver)
    return order[0] if order else None


def provider_order(vm: dict, driver: str) -> list[str]:
    """The providers whose cpus and memory count, best first (see carried_provider)."""
    order = list(vm.get("provider_order") or [])
    if driver in order:
        order = [driver] + [p for p in order if p != driver]
    if driver != "docker":
        order = [p for p in order if p != "docker"]
    return order


def libvirt_options(settings: dict) -> dict[str, Any]:
    """vagrant-libvirt settings that have a [machines.NAME.libvirt] equivalent."""
    table: dict[str, Any] = {}
    drv = (settings.get("driver") or {}).get("value")
    if drv in ("kvm", "qemu"):
        table["domain_type"] = drv
    mt = (settings.get("machine_type") or {}).get("value")
    if isinstance(mt, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", mt):
        table["machine_type"] = mt
    return table
