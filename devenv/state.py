"""The .devenv/ store of a project, the project lock and the global machine index.

State holds only what the engine cannot answer: which driver and handle a machine has, the
box it was made from, and the fingerprints of the provision steps applied. Every write is
atomic (temp file, fsync, rename), so a kill at any moment leaves the old or the new file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devenv import ui
from devenv.errors import LockTimeout, StateError

STATE_DIR = ".devenv"
SCHEMA_VERSION = 1


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    # A name of our own instead of tempfile (whose import costs every command ~2 ms): pid and
    # thread make it unique among live writers; a leftover of a killed one with a reused pid goes.
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_json(path: Path, *, what: str, fix: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {what} {path}: {exc}", hint=fix) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StateError(f"{what} {path} is unreadable (not valid JSON: {exc})", hint=fix) from exc


class ProjectState:
    """.devenv/ of one project: one JSON file per machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / STATE_DIR

    def ensure(self) -> None:
        try:
            if not self.dir.is_dir():
                self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            gi = self.dir / ".gitignore"
            if not gi.exists():
                atomic_write(gi, "# written by devenv: local machine state, never commit it\n*\n", mode=0o644)
        except OSError as exc:  # checked before anything is made: the command stops here
            raise StateError(
                f"cannot write devenv's state folder {self.dir}: {exc.strerror or exc}",
                hint="devenv keeps a project's state in .devenv/ beside its Devfile: run it as a user who can "
                "write the project folder (or make the folder writable)",
            ) from exc

    def machine_file(self, name: str) -> Path:
        return self.dir / "machines" / f"{name}.json"

    def load(self, name: str) -> dict | None:
        path = self.machine_file(name)
        data = read_json(
            path,
            what="machine state",
            fix=f"remove it (`rm {path}`): devenv finds the machine again by its engine labels; "
            f"`devenv destroy {name}` also works without it",
        )
        if data is not None and not isinstance(data, dict):
            raise StateError(
                f"machine state {path} is unreadable (not a JSON object)",
                hint=f"remove it (`rm {path}`); devenv finds the machine again by its labels",
            )
        return data

    def load_or_none(self, name: str) -> dict | None:
        """For destroy and sweeps: a broken state file must not stop the cleanup."""
        try:
            return self.load(name)
        except StateError as exc:
            ui.warn(f"{exc.message}; carrying on with the engine's labels")
            return None

    def save(self, name: str, data: dict) -> None:
        self.ensure()
        data = {**data, "schema": SCHEMA_VERSION}
        atomic_write(self.machine_file(name), json.dumps(data, indent=2, sort_keys=True) + "\n")

    def machine_dir(self, name: str) -> Path:
        """Per-machine secrets that are state: its SSH keys and pinned host key (0700)."""
        return self.dir / "machines" / name

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.machine_file(name).unlink()
        import shutil

        shutil.rmtree(self.machine_dir(name), ignore_errors=True)

    def names(self) -> list[str]:
        d = self.dir / "machines"
        return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []

    @contextlib.contextmanager
    def lock(self, command: str, *, timeout: float | None = None) -> Iterator[None]:
        """Serialise mutating commands on this project; say so when waiting."""
        self.ensure()
        path = self.dir / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another devenv command"
                ui.info(None, f"waiting for {holder} to finish on this project ...")
                deadline = None if timeout is None else time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if deadline is not None and time.monotonic() > deadline:
                            raise LockTimeout(
                                f"{holder} still holds the project lock {path}",
                                hint="wait for it to finish, or stop it",
                            ) from None
                        time.sleep(0.1)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"`devenv {command}` (pid {os.getpid()})".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing drops the flock


def data_dir() -> Path:
    env = os.environ.get("DEVENV_HOME")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("devenv", appauthor=False))


class GlobalIndex:
    """Every machine devenv made on this host, for `devenv global-status`."""

    def __init__(self, base: Path | None = None) -> None:
        self.path = (base or data_dir()) / "index.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(
                f"cannot write devenv's data folder {self.path.parent}: {exc.strerror or exc}",
                hint="set DEVENV_HOME to a folder you can write, or fix that folder's permissions",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict:
        try:
            data = read_json(
                self.path, what="global index", fix=f"remove it (`rm {self.path}`); it is rebuilt by `devenv up`"
            )
        except StateError as exc:
            ui.warn(exc.message + " — starting a new one")
            return {}
        return data.get("machines", {}) if isinstance(data, dict) else {}

    def entries(self) -> list[dict]:
        return sorted(self._read().values(), key=lambda e: (e.get("root", ""), e.get("machine", "")))

    def record(self, entry: dict) -> None:
        key = f"{entry['project_id']}/{entry['machine']}"
        with self._locked():
            data = self._read()
            data[key] = {**entry, "updated": int(time.time())}
            atomic_write(self.path, json.dumps({"machines": data}, indent=2, sort_keys=True) + "\n")

    def forget(self, project_id: str, machine: str | None = None) -> None:
        with self._locked():
            data = self._read()
            keys = [
                k
                for k, e in data.items()
                if e.get("project_id") == project_id and (machine is None or e.get("machine") == machine)
            ]
            if not keys:
                return
            for k in keys:
                del data[k]
            atomic_write(self.path, json.dumps({"machines": data}, indent=2, sort_keys=True) + "\n")
