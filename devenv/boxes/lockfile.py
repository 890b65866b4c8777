"""Devfile.lock: which box version and artifact digest each machine was made from.

Committed with the project so that every engineer's `devenv up` uses the same box versions;
`devenv up --frozen` fails instead of changing it; `devenv box update` moves it on purpose.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from devenv.errors import StateError
from devenv.state import atomic_write, read_bounded

MAX_LOCK_BYTES = 1024 * 1024  # one entry per machine: a few hundred bytes each

HEADER = (
    "# Devfile.lock: the box each machine runs, written by devenv. Commit it.\n"
    "# `devenv box update` moves it forward; `devenv up --frozen` refuses to change it.\n"
)


@dataclass(frozen=True)
class LockEntry:
    box: str
    version: str | None
    provider: str
    digest: str | None

    def describe(self) -> str:
        return f"{self.box}@{self.version}" if self.version else self.box


class Lockfile:
    def __init__(self, devfile_path: Path) -> None:
        self.path = devfile_path.parent / (devfile_path.name + ".lock")
        self._entries: dict[str, LockEntry] | None = None

    @property
    def entries(self) -> dict[str, LockEntry]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def _read(self) -> dict[str, LockEntry]:
        # Committed with the project, so hostile input: a regular file of bounded size (never a
        # link to /dev/zero or a FIFO), every value of the type devenv writes.
        fix = "restore it from version control, or remove it and run `devenv box update` to write a new one"
        try:
            raw = read_bounded(self.path, limit=MAX_LOCK_BYTES)
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror or exc}", hint=fix) from exc
        if raw is None:
            return {}
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise StateError(f"{self.path} is unreadable: {exc}", hint=fix) from None
        machines = data.get("machines", {})
        if not isinstance(machines, dict):
            raise StateError(f"{self.path} is unreadable: 'machines' is not a table", hint=fix)
        out: dict[str, LockEntry] = {}
        for name, e in machines.items():
            if not isinstance(e, dict) or not isinstance(e.get("box"), str):
                raise StateError(f"{self.path} is unreadable: machines.{name} has no box name", hint=fix)
            for key in ("version", "provider", "digest"):
                if not isinstance(e.get(key, ""), str):
                    raise StateError(f"{self.path} is unreadable: machines.{name}.{key} is not a string", hint=fix)
            out[name] = LockEntry(e["box"], e.get("version"), e.get("provider", ""), e.get("digest"))
        return out

    def get(self, machine: str) -> LockEntry | None:
        return self.entries.get(machine)

    def set(self, machine: str, entry: LockEntry) -> None:
        self.entries[machine] = entry
        self.write()

    def write(self) -> None:
        out = [HEADER, "version = 1\n"]
        for name in sorted(self.entries):
            e = self.entries[name]
            out.append(f"\n[machines.{json.dumps(name)}]\n")
            out.append(f"box = {json.dumps(e.box)}\n")
            if e.version:
                out.append(f"version = {json.dumps(e.version)}\n")
            out.append(f"provider = {json.dumps(e.provider)}\n")
            if e.digest:
                out.append(f"digest = {json.dumps(e.digest)}\n")
        atomic_write(self.path, "".join(out), mode=0o644)
