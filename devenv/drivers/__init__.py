"""The driver seam: what every engine (Docker, libvirt, VirtualBox, Vagrant) must offer.

Drivers own the machine lifecycle and never run commands in the guest: they hand out a
Transport for that. Driver modules import their engine library lazily, so importing a driver
(to validate its Devfile table) costs nothing at CLI start-up.
"""

from __future__ import annotations

import enum
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from devenv.errors import DevfileError

if TYPE_CHECKING:
    from devenv.devfile import Machine
    from devenv.schema import Problem, Table
    from devenv.transport import Transport

LABEL_PROJECT = "devenv.project"
LABEL_MACHINE = "devenv.machine"
LABEL_ROOT = "devenv.root"


class MachineState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    NOT_CREATED = "not created"

    def __str__(self) -> str:
        return self.value


class Ownership(enum.Enum):
    """What the engine says about a handle read from .devenv/ (which is never trusted as such)."""

    OURS = "ours"  # exists and carries this project's id and this machine's name
    GONE = "gone"  # no such engine object (any more)
    FOREIGN = "foreign"  # exists, but another project's, not devenv's, or the handle is malformed


# Engine-side names devenv makes (and Docker ids): a handle outside this shape is never passed to
# an engine (no option injection into VBoxManage argv, no path tricks in API URLs).
SAFE_HANDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


def safe_handle(handle: object) -> bool:
    return isinstance(handle, str) and SAFE_HANDLE.fullmatch(handle) is not None


@dataclass(frozen=True)
class Target:
    """One machine of one project, as a driver needs to see it."""

    project_id: str
    project_root: Path
    machine: Machine

    @property
    def name(self) -> str:
        return self.machine.name

    @property
    def resource_name(self) -> str:
        """Deterministic engine-side name: found again even when .devenv/ is lost."""
        return f"devenv-{self.project_id}-{self.machine.name}"

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_PROJECT: self.project_id,
            LABEL_MACHINE: self.machine.name,
            LABEL_ROOT: str(self.project_root),
        }


@dataclass(frozen=True)
class BoxArtifact:
    """What a driver boots: resolved from a box reference before create()."""

    name: str  # "debian-12" or "docker:alpine:3"
    version: str | None
    ref: str  # engine-side reference (image tag, qcow2 path, ...)
    digest: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PortBinding:
    host_ip: str
    host: int
    guest: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host} -> {self.guest}/{self.protocol}"


class Driver(Protocol):
    name: ClassVar[str]
    needs_box: ClassVar[bool]  # False when the engine's own config names the image (a Vagrantfile)
    options: ClassVar[Table]  # the schema of [machines.NAME.<driver>]

    def check_available(self, machine: Machine | None = None) -> None:
        """Raise BackendUnavailable when the engine (the one this machine uses, if given) is not reachable."""
        ...

    def validate(self, machine: Machine) -> list[Problem]: ...
    def preflight(self, target: Target) -> None:
        """Checks against this host that change nothing (e.g. every port's host_ip is an address
        here), run by `up`/`reload` before the project lock or any file is written."""
        ...

    def prepare_box(self, target: Target, box: str) -> BoxArtifact: ...
    def create(self, target: Target, box: BoxArtifact) -> str: ...
    def find(self, target: Target) -> str | None: ...
    def owns(self, handle: str, target: Target) -> Ownership:
        """Whether the engine object a handle names is this target's machine.

        OURS only when it carries the target's project id and machine name (container labels,
        domain metadata, VM extradata; for the Vagrant bridge: the Vagrant machine the Devfile
        names). The project uses a handle from .devenv/ only when this says OURS: a forged or
        stale state file never makes devenv reach, change or remove anything else. Must not
        contact any engine other than the one the machine's Devfile entry names."""
        ...

    def start(self, handle: str) -> None: ...
    def stop(self, handle: str, *, force: bool = False) -> None: ...
    def destroy(self, handle: str) -> None: ...
    def state(self, handle: str) -> MachineState: ...
    def ports(self, handle: str) -> list[PortBinding]: ...
    def transport(self, handle: str) -> Transport: ...
    def sweep(self, project_id: str, root: Path | None = None) -> list[str]: ...


@runtime_checkable
class SupportsSnapshots(Protocol):
    def snapshot_save(self, handle: str, name: str) -> None: ...
    def snapshot_restore(self, handle: str, name: str) -> None: ...
    def snapshot_list(self, handle: str) -> list[str]: ...
    def snapshot_delete(self, handle: str, name: str) -> None: ...


@runtime_checkable
class SupportsSuspend(Protocol):
    def suspend(self, handle: str) -> None: ...
    def resume(self, handle: str) -> None: ...


# Built-in drivers by name; third-party drivers come from the "devenv.drivers" entry point group,
# looked up only when a name is not built in (entry point scans cost start-up time).
BUILTIN: dict[str, str] = {
    "docker": "devenv.drivers.docker:DockerDriver",
    "libvirt": "devenv.drivers.libvirt:LibvirtDriver",
    "virtualbox": "devenv.drivers.virtualbox:VirtualBoxDriver",
    "vagrant": "devenv.drivers.vagrant:VagrantDriver",
}

_instances: dict[str, Driver] = {}


def driver_names() -> list[str]:
    return sorted(BUILTIN)


def driver_class(name: str) -> type:
    spec = BUILTIN.get(name)
    if spec is None:
        from importlib.metadata import entry_points

        for ep in entry_points(group="devenv.drivers"):
            if ep.name == name:
                return ep.load()
        raise DevfileError(f"unknown driver '{name}' (known: {', '.join(driver_names())})")
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def needs_box(name: str) -> bool:
    """Whether machines of this driver must name a box (unknown drivers: yes; reported elsewhere)."""
    try:
        return getattr(driver_class(name), "needs_box", True)
    except DevfileError:
        return True


def get_driver(name: str) -> Driver:
    if name not in _instances:
        _instances[name] = driver_class(name)()
    return _instances[name]
