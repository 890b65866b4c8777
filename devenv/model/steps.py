"""A provision step as data, and the rules every step obeys (a Devfile's and a box recipe's alike).

The model's bottom: the Devfile (devfile.py) and box recipes (recipe.py) both read their steps
with check_step, and both files with the same size and nesting bounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from devenv import plugins
from devenv.errors import DevfileError
from devenv.model.schema import MISSING, Problem, Str, Table, did_you_mean

MAX_DEVFILE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 100_000  # keys and array items in all: real Devfiles have hundreds; checking costs per value
# A secret becomes an environment variable, which Linux caps at 128 KiB (MAX_ARG_STRLEN).


# Vagrant's provisioner options and types where devenv says it otherwise: `validate` names the
# devenv word at the unknown key (difflib would offer 'args' for Vagrant's `path`).
VAGRANT_STEP_HINTS = {
    "shell": {
        "path": "did you mean 'script'? (Vagrant's path: a script in the project, copied in and run)",
        "privileged": 'steps run as root; user = "NAME" runs one as another user (Vagrant\'s privileged: false)',
        "upload_path": "devenv uploads a script itself (to /tmp/devenv-provision/)",
    },
    "ansible": {
        "host_vars": "did you mean 'inventory_vars'? (the machine's host variables in devenv's inventory)",
        "inventory_path": "devenv generates the inventory: the machine, reached with its pinned key",
    },
}
VAGRANT_STEP_TYPES = {
    "ansible_local": 'devenv\'s ansible step runs ansible-playbook on this host against the machine: type = "ansible"',
    "docker": 'a container is a machine of its own in devenv: box = "docker:IMAGE"',
}


@dataclass(frozen=True)
class Step:
    index: int
    type: str
    config: dict = field(hash=False, compare=True)
    run: str = "once"
    name: str | None = None

    @property
    def label(self) -> str:
        prov = plugins.get_provisioner(self.type)
        return f"[{self.index}] {self.name or prov.describe(self.config)}"


def check_step(value: Any, path: tuple, problems: list) -> Any:
    if not isinstance(value, dict):
        problems.append(Problem(path, 'expected a step table like { type = "shell", script = "..." }'))
        return MISSING
    t = value.get("type")
    if t is None:
        problems.append(Problem(path + ("type",), f"is required (one of: {', '.join(plugins.provisioner_types())})"))
        return MISSING
    if Str().check(t, path + ("type",), problems) is MISSING:
        return MISSING
    if t not in plugins.PROVISIONER_TYPES:  # a built-in type is answered without scanning for plugins
        known = plugins.provisioner_types()
        hint = f": {VAGRANT_STEP_TYPES[t]}" if t in VAGRANT_STEP_TYPES else did_you_mean(t, known)
        problems.append(Problem(path + ("type",), f"unknown provisioner type '{t}' (known: {', '.join(known)})" + hint))
        return MISSING
    try:
        options = plugins.get_provisioner(t).options
    except DevfileError as exc:  # a plugin that fails to load: reported where its type is named
        problems.append(Problem(path + ("type",), exc.message))
        return MISSING
    before = len(problems)
    if isinstance(options, Table):
        out = options.check(value, path, problems, hints=VAGRANT_STEP_HINTS.get(t))
    else:
        out = options.check(value, path, problems)
    if out is MISSING or len(problems) > before:
        return MISSING
    return out


def shape_problem(data: object, depth: int, values: int) -> Problem | None:
    """A value nested deeper than ``depth``, or more than ``values`` values in all (no recursion)."""
    stack: list[tuple[object, tuple]] = [(data, ())]
    count = 0
    while stack:
        value, path = stack.pop()
        count += 1
        if count > values:
            return Problem(path[:3], f"the Devfile holds more than {values} values: it is not a hand-written config")
        if len(path) > depth:
            return Problem(path[: depth + 1], f"nested deeper than {depth} levels")
        if isinstance(value, dict):
            stack.extend((v, path + (k,)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, path + (i,)) for i, v in enumerate(value))
    return None
