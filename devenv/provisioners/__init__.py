"""The provisioner seam: what a provision step is, how it runs, and its fingerprint.

Provisioners see a Transport (run/put in a running machine), never a driver, so the same
step runs in a container, a VM or a box build. A step's fingerprint is sha256 over its type,
its normalised config and the content of every file it reads; paths enter the fingerprint as
written (relative), so a box recipe and a Devfile using the same step agree on it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from devenv.errors import DevfileError

if TYPE_CHECKING:
    from devenv.devfile import Step
    from devenv.schema import Problem, Table
    from devenv.transport import Transport

# Keys that describe how or when a step runs, not what it does: changing them reruns nothing.
NON_CONTENT_KEYS = frozenset({"name", "run", "allow_outside_project"})


@dataclass
class RunContext:
    machine: str
    root: Path  # where the step's relative paths start (project root or recipe root)
    transport: Transport
    on_output: Callable[[str], None]


def step_fields(step_type: str) -> dict:
    """The keys every provision step has (type, name, run), for each provisioner's option table."""
    from devenv.schema import Field, Str

    return {
        "type": Field(Str(choices=(step_type,))),
        "name": Field(Str(description="A label shown in output and status")),
        "run": Field(Str(choices=("once", "always", "never"))),
    }


def run_step(step, label: str, root: Path, transport: Transport) -> None:
    """Run one provision step in a machine (or box build), its output shown under `label`."""
    from devenv import ui

    ctx = RunContext(machine=label, root=root, transport=transport, on_output=lambda line: ui.detail(label, line))
    get_provisioner(step.type).run(step.config, ctx)


class Provisioner(Protocol):
    type: ClassVar[str]
    options: ClassVar[Table]

    def files(self, config: dict, root: Path) -> list[Path]:
        """Files and folders the step reads on the host (for fingerprints and validation)."""
        ...

    def check(self, config: dict, root: Path, path: tuple) -> list[Problem]: ...
    def describe(self, config: dict) -> str: ...
    def run(self, config: dict, ctx: RunContext) -> None: ...


BUILTIN: dict[str, str] = {
    "shell": "devenv.provisioners.shell:ShellProvisioner",
    "file": "devenv.provisioners.file:FileProvisioner",
    "ansible": "devenv.provisioners.ansible:AnsibleProvisioner",
}

_instances: dict[str, Provisioner] = {}


def provisioner_types() -> list[str]:
    return sorted(BUILTIN)


def get_provisioner(type_name: str) -> Provisioner:
    if type_name not in _instances:
        spec = BUILTIN.get(type_name)
        if spec is None:
            raise DevfileError(f"unknown provisioner type '{type_name}'")
        module, _, attr = spec.partition(":")
        _instances[type_name] = getattr(importlib.import_module(module), attr)()
    return _instances[type_name]


def host_path_problems(config: dict, key: str, root: Path, path: tuple, *, want_file: bool) -> list[Problem]:
    """A host path a step reads must exist and, unless the step allows it, stay inside the project.

    A Devfile from a cloned repository must not be able to copy ~/.ssh or /etc into a machine
    (or a box that is shipped) without saying so in plain sight.
    """
    from devenv.schema import Problem

    rel = config[key]
    p = Path(os.path.normpath(root / os.path.expanduser(rel)))
    if not (p == root or root in p.parents) and not config.get("allow_outside_project"):
        return [
            Problem(
                path + (key,),
                f"'{rel}' is outside the project ({root}); "
                "set allow_outside_project = true on this step if you mean it",
            )
        ]
    if not (p.is_file() if want_file else p.exists()):
        return [Problem(path + (key,), f"file not found: {rel}")]
    return []


def _hash_tree(h, path: Path, label: str) -> None:
    """Feed a file or a whole folder (names, modes, contents) into the hash, in a stable order."""
    if path.is_dir():
        h.update(f"dir:{label}\0".encode())
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                rel = p.relative_to(path).as_posix()
                _hash_file(h, p, f"{label}/{rel}")
    elif path.exists():
        _hash_file(h, path, label)
    else:
        h.update(f"missing:{label}\0".encode())


def _hash_file(h, path: Path, label: str) -> None:
    executable = os.access(path, os.X_OK)
    h.update(f"file:{label}:{int(executable)}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    h.update(b"\0")


def fingerprint(step: Step, root: Path) -> str:
    """sha256 over type + normalised config + the content of every file the step reads."""
    prov = get_provisioner(step.type)
    config = {k: v for k, v in step.config.items() if k not in NON_CONTENT_KEYS}
    h = hashlib.sha256()
    h.update(json.dumps({"type": step.type, "config": config}, sort_keys=True).encode())
    for p in prov.files(step.config, root):
        try:
            label = p.relative_to(root).as_posix()
        except ValueError:
            label = p.as_posix()
        _hash_tree(h, p, label)
    return "sha256:" + h.hexdigest()
