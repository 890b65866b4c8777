"""The built-in drivers (Docker, libvirt, VirtualBox, Vagrant) and how a driver is found by name.

What a driver must offer is devenv.contract. Driver modules import their engine library
lazily, so importing a driver (to validate its Devfile table) costs nothing at CLI start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from devenv.errors import DevfileError

if TYPE_CHECKING:
    from devenv.contract import Driver

# Built-in drivers by name; third-party drivers come from the "devenv.drivers" entry point group,
# looked up only when a name is not built in (entry point scans cost start-up time).
BUILTIN: dict[str, str] = {
    "docker": "devenv.drivers.docker.driver:DockerDriver",
    "libvirt": "devenv.drivers.libvirt.driver:LibvirtDriver",
    "virtualbox": "devenv.drivers.virtualbox.driver:VirtualBoxDriver",
    "vagrant": "devenv.drivers.vagrant.driver:VagrantDriver",
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
