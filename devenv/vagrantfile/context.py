"""What every part of the mapping shares: where a setting is in the Vagrantfile, how its paths
read from the Devfile's folder, the problems found, and how a Vagrantfile value reads in a note."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv.model.devfile import LocatedProblem, display_path
from devenv.vagrantfile.document import Item, Note


@dataclass
class HostPath:
    text: str  # as the Devfile writes it: relative to its folder, or ~/..., or absolute
    outside: bool  # outside the project (the Devfile's folder)
    absolute: Path


@dataclass
class Context:
    vagrantfile: Path  # resolved
    base: Path  # the Devfile's folder (real): devenv's project root
    driver: str  # "docker" | "libvirt"
    env_values: dict[str, str] = field(default_factory=dict)  # value -> host variable the Vagrantfile read
    problems: list[LocatedProblem] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.vagrantfile.parent

    def where(self, rec: dict | None) -> str | None:
        """Where a recorded setting is: "Vagrantfile:12", or "servers.rb:4" in a file it loads."""
        if not rec or not rec.get("line"):
            return None
        file = rec.get("file") or str(self.vagrantfile)
        shown = "Vagrantfile" if file == str(self.vagrantfile) else relative(file, self.folder)
        return f"{shown}:{rec['line']}"

    def problem(self, rec: dict | None, key: str, message: str) -> None:
        """A problem with the Vagrantfile itself, shown as `validate` shows a Devfile's."""
        rec = rec or {}
        file = rec.get("file") or str(self.vagrantfile)
        self.problems.append(LocatedProblem(display_path(Path(file)), rec.get("line"), key, message))

    def path(self, written: str) -> HostPath:
        """A host path the Vagrantfile names (relative to its folder, ~ expanded), as the Devfile
        writes it: relative to the Devfile's folder when it is inside (by its real path, as devenv
        confines it), else as written (~/...) or absolute."""
        absolute = Path(os.path.normpath(os.path.join(self.folder, os.path.expanduser(written))))
        real = os.path.realpath(absolute)
        base = str(self.base)
        if real == base or real.startswith(base.rstrip("/") + "/"):
            lexical = os.path.join(os.path.realpath(absolute.parent), absolute.name)
            return HostPath(Path(os.path.relpath(lexical, base)).as_posix(), False, absolute)
        if written.startswith("~"):
            return HostPath(written, True, absolute)
        home = os.path.expanduser("~")
        if home != "~" and str(absolute).startswith(home.rstrip("/") + "/"):
            return HostPath("~/" + os.path.relpath(absolute, home), True, absolute)
        return HostPath(str(absolute), True, absolute)


def relative(path: str, base: Path) -> str:
    try:
        rel = os.path.relpath(path, base)
    except ValueError:
        return path
    return path if rel.startswith("../../..") else rel


def shown(v: Any, limit: int = 160) -> str:
    """A Vagrantfile value in a note, as Ruby would write it, cut short."""
    if isinstance(v, str):
        text = '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    elif isinstance(v, bool):
        text = "true" if v else "false"
    elif v is None:
        text = "nil"
    elif isinstance(v, list):
        text = "[" + ", ".join(shown(x, limit) for x in v) + "]"
    elif isinstance(v, dict):
        text = "{" + ", ".join(f"{k}: {shown(x, limit)}" for k, x in v.items()) + "}"
    else:
        text = str(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def options_text(options: dict, calls: list | None = None) -> str:
    parts = [f"{k}: {shown(v)}" for k, v in options.items()]
    parts += [f"{c['name']} {shown(c.get('args'))}" for c in calls or []]
    return ", ".join(parts)


def opt(options: dict, name: str, default: Any = None) -> Any:
    """A recorded option's plain value ({"value": ..., "file", "line"} when set in a block)."""
    v = options.get(name, default)
    if isinstance(v, dict) and "value" in v and set(v) <= {"value", "file", "line"}:
        return v["value"]
    return v


def plain_options(options: dict) -> dict[str, Any]:
    return {k: opt(options, k) for k in options}


def lost(text: str, where: str | None) -> Item:
    """An array entry left out: only its note is written."""
    return Item(None, [Note(text, "lost", where)])


def arg(v: Any) -> str:
    """A value as a string, as Vagrant's shell provisioner puts it on a command line or in env."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)
