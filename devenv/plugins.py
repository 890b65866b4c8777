"""The one registry of drivers and provisioners: devenv's own, and those of installed plugins.

A plugin is a distribution that names its classes in the ``devenv.drivers`` or
``devenv.provisioners`` entry point group (see devenv.contract for what a class must offer):

    [project.entry-points."devenv.drivers"]
    podman = "devenv_podman:PodmanDriver"

Start-up time is a feature, so built-in names are looked up in a dict here and their module is
imported only when used. Scanning the installed distributions' entry points costs milliseconds
(importlib.metadata reads every package's metadata folder), so it happens lazily, at most once
per process, and only for a name that is not built in or when the full list is needed (an error
message listing the choices, ``devenv schema``). This module imports only the standard library
and devenv.errors: it sits below everything that uses it.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from devenv.errors import DevenvError, DevfileError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from devenv.contract import Driver, Provisioner

DRIVERS = "devenv.drivers"
PROVISIONERS = "devenv.provisioners"

BUILTIN_DRIVERS: dict[str, str] = {
    "docker": "devenv.drivers.docker.driver:DockerDriver",
    "libvirt": "devenv.drivers.libvirt.driver:LibvirtDriver",
    "virtualbox": "devenv.drivers.virtualbox.driver:VirtualBoxDriver",
    "vagrant": "devenv.drivers.vagrant.driver:VagrantDriver",
}
BUILTIN_PROVISIONERS: dict[str, str] = {
    "shell": "devenv.provisioners.shell:ShellProvisioner",
    "file": "devenv.provisioners.file:FileProvisioner",
    "ansible": "devenv.provisioners.ansible:AnsibleProvisioner",
}
_BUILTIN = {DRIVERS: BUILTIN_DRIVERS, PROVISIONERS: BUILTIN_PROVISIONERS}
_WHAT = {DRIVERS: "driver", PROVISIONERS: "provisioner type"}  # an unknown name is "unknown driver 'x'"
_KIND = {DRIVERS: "driver", PROVISIONERS: "provisioner"}  # a plugin is "the driver plugin 'x'"
# The class attribute that must repeat the entry point's name: the core and the Devfile's
# [machines.X.NAME] table use both, so a mismatch would be a bug that shows up far from its cause.
_NAME_ATTR = {DRIVERS: "name", PROVISIONERS: "type"}

_plugins: dict[str, dict[str, EntryPoint]] | None = None  # group -> name -> entry point; None: not scanned
_drivers: dict[str, Driver] = {}
_provisioners: dict[str, Provisioner] = {}
# `up` brings machines up in threads: one scan and one instance per name, whichever asks first.
_lock = threading.RLock()


# ---------------------------------------------------------------------------------------------
# Names


def _entry_points(group: str) -> dict[str, EntryPoint]:
    """The plugins of a group by name, from one scan of the installed distributions."""
    with _lock:
        return (_plugins if _plugins is not None else _scan())[group]


def _scan() -> dict[str, dict[str, EntryPoint]]:
    global _plugins
    from importlib.metadata import entry_points

    try:
        eps = entry_points()
    except Exception as exc:  # a broken package's metadata: a message, not devenv's traceback
        raise DevfileError(
            f"cannot read the installed packages' plugin entry points: {type(exc).__name__}: {exc}",
            hint="repair or remove the broken package (python -m pip check)",
        ) from exc
    found: dict[str, dict[str, EntryPoint]] = {g: {} for g in _BUILTIN}
    for g, by_name in found.items():
        for ep in eps.select(group=g):
            # Built-ins win: devenv's own distribution lists them here too, and a plugin that
            # names one (a second "docker") is ignored, so installing a package can never
            # quietly replace a driver whose safety checks devenv's tests prove.
            if ep.name in _BUILTIN[g]:
                continue
            # Two plugins with one name: the first distribution on sys.path wins, as imports do.
            by_name.setdefault(ep.name, ep)
    _plugins = found
    return found


def _known(group: str, name: object) -> bool:
    if not isinstance(name, str):
        return False
    return name in _BUILTIN[group] or name in _entry_points(group)


def _names(group: str) -> list[str]:
    return sorted({*_BUILTIN[group], *_entry_points(group)})


class Names:
    """A live collection of one group's names, for schema choices (``Str(choices=...)``).

    Membership of a built-in name is answered without the entry point scan; iterating (the
    choices in an error message, the JSON Schema's enum) scans.
    """

    def __init__(self, group: str) -> None:
        self.group = group

    def __contains__(self, name: object) -> bool:
        return _known(self.group, name)

    def __iter__(self) -> Iterator[str]:
        return iter(_names(self.group))

    def __len__(self) -> int:
        return len(_names(self.group))

    def __bool__(self) -> bool:  # never empty: the built-ins are always there (and no scan to say so)
        return True

    def __repr__(self) -> str:
        return f"Names({self.group!r})"


DRIVER_NAMES = Names(DRIVERS)
PROVISIONER_TYPES = Names(PROVISIONERS)


def driver_names() -> list[str]:
    """Every driver name, built-in and plugin (scans the entry points)."""
    return _names(DRIVERS)


def provisioner_types() -> list[str]:
    """Every provisioner type, built-in and plugin (scans the entry points)."""
    return _names(PROVISIONERS)


def _unknown(group: str, name: str) -> DevfileError:
    import difflib  # an error path: not worth its import at every start

    known = _names(group)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return DevfileError(
        f"unknown {_WHAT[group]} '{name}' (known: {', '.join(known)})"
        + (f" (did you mean '{close[0]}'?)" if close else ""),
        hint=f"a {_WHAT[group]} from a plugin needs its package installed in devenv's Python environment",
    )


# ---------------------------------------------------------------------------------------------
# Classes and instances


def _origin(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return f"{ep.value}"
    return f"{ep.value}, from the package {dist.name} {dist.version}"


def _load(group: str, name: str) -> type:
    spec = _BUILTIN[group].get(name)
    if spec is not None:
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)
    ep = _entry_points(group).get(name)
    if ep is None:
        raise _unknown(group, name)
    what = f"the {_KIND[group]} plugin '{name}' ({_origin(ep)})"
    dist = getattr(ep, "dist", None)
    fix = f"python -m pip install --force-reinstall {dist.name}" if dist is not None else "reinstall it"
    try:
        cls = ep.load()
    except Exception as exc:  # any error in third-party code becomes a clear message
        raise DevfileError(
            f"{what} failed to load: {type(exc).__name__}: {exc}",
            hint=f"fix or remove that package ({fix}, or pip uninstall it)",
        ) from exc
    options = getattr(cls, "options", None)
    if not isinstance(cls, type) or not callable(getattr(options, "check", None)):
        raise DevfileError(
            f"{what} is not a {_KIND[group]} class with an `options` table (see devenv.contract)",
            hint="report it to the plugin's author, or pip uninstall the package",
        )
    declared = getattr(cls, _NAME_ATTR[group], None)
    if declared != name:
        raise DevfileError(
            f"{what} declares {_NAME_ATTR[group]} = {declared!r}, not {name!r}",
            hint="the class attribute and the entry point name must agree: report it to the plugin's author",
        )
    return cls


def _instance(group: str, name: str, cache: dict[str, Any]) -> Any:
    if name in cache:
        return cache[name]
    with _lock:
        if name in cache:
            return cache[name]
        cls = _load(group, name)
        try:
            cache[name] = cls()
        except Exception as exc:
            # A built-in's error, or a DevenvError (it carries its own hint), is reported as it is.
            if name in _BUILTIN[group] or isinstance(exc, DevenvError):
                raise
            raise DevfileError(
                f"the {_KIND[group]} plugin '{name}' failed to start: {type(exc).__name__}: {exc}",
                hint="report it to the plugin's author, or pip uninstall the package",
            ) from exc
    return cache[name]


def driver_class(name: str) -> type:
    """The class of a driver; DevfileError when unknown or when its plugin fails to load."""
    return _load(DRIVERS, name)


def needs_box(name: str) -> bool:
    """Whether machines of this driver must name a box (unknown drivers: yes; reported elsewhere)."""
    try:
        return getattr(driver_class(name), "needs_box", True)
    except DevfileError:
        return True


def get_driver(name: str) -> Driver:
    """The driver of this name (one instance per process)."""
    return _instance(DRIVERS, name, _drivers)


def provisioner_class(type_name: str) -> type:
    return _load(PROVISIONERS, type_name)


def get_provisioner(type_name: str) -> Provisioner:
    """The provisioner of this step type (one instance per process)."""
    return _instance(PROVISIONERS, type_name, _provisioners)
