"""The .devenv/ store of a project, the project lock and the global machine index.

State holds only what the engine cannot answer: which driver and handle a machine has, the
box it was made from, and the fingerprints of the provision steps applied. Every write is
atomic (temp file, fsync, rename), so a kill at any moment leaves the old or the new file.

.devenv/ sits in a folder a repository controls, so nothing in it is trusted: files are read
only when they are regular files of bounded size (never through a link, never a FIFO), their
content is type-checked, and every write goes through directory file descriptors opened with
O_NOFOLLOW, so a link committed as `.devenv/machines -> /etc` never makes devenv read, write or
delete outside the project. A handle read here is used only after its driver confirms that the
engine object carries this project's and machine's labels (Project.handle).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv.contract import QUIET, Reporter
from devenv.errors import LockTimeout, StateError
from devenv.masking import head
from devenv.paths import read_regular

if TYPE_CHECKING:
    from devenv.model.devfile import Devfile

STATE_DIR = ".devenv"
SCHEMA_VERSION = 1
MAX_STATE_BYTES = 1 << 20  # a machine state is a few KiB; anything larger is not devenv's
MAX_INDEX_BYTES = 16 << 20  # the global index: ~300 bytes a machine

_MACHINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Atomically (re)place a file outside .devenv/ (the global index, Devfile.lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fchmod(f.fileno(), mode)  # explicit: never the process umask
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a link at `path` is replaced, never followed
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_at(dfd: int, name: str, data: str | bytes, mode: int = 0o600) -> None:
    """Atomically (re)place file `name` in the folder open as `dfd`.

    The temp file is made with O_EXCL|O_NOFOLLOW and renamed over `name`: a link planted at
    `name` is replaced, never followed."""
    raw = data.encode() if isinstance(data, str) else data
    # A name of our own instead of tempfile (whose import costs every command ~2 ms): pid and
    # thread make it unique among live writers; a leftover of a killed one with a reused pid goes.
    tmp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dfd)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fchmod(f.fileno(), mode)  # explicit: never the process umask
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    os.fsync(dfd)


def read_bounded(path: Path | str, *, limit: int, dir_fd: int | None = None) -> bytes | None:
    """The bytes of a regular file of at most `limit` bytes; None when it does not exist.

    Never follows a link at the last component (O_NOFOLLOW) and never blocks on a FIFO or a
    device (O_NONBLOCK, then fstat); raises OSError with a readable strerror otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "it is a symbolic link (devenv never makes links there)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"it is {st.st_size} bytes, more than the {limit} devenv reads")
        return read_fd(fd, limit)
    finally:
        os.close(fd)


def read_fd(fd: int, limit: int) -> bytes:
    """All bytes from an open file, at most `limit`: OSError(EFBIG) when there are more (a file
    that grew after its fstat, or /dev/zero behind a check that was raced)."""
    chunks = []
    total = 0
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise OSError(errno.EFBIG, f"it is more than the {limit} bytes devenv reads")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, *, label: str, fix: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateError(f"{label} is unreadable (not UTF-8 text: {exc.reason} at byte {exc.start})", hint=fix) from exc
    try:
        return json.loads(text)
    except RecursionError:
        raise StateError(f"{label} is unreadable (nested too deeply)", hint=fix) from None
    except ValueError as exc:
        raise StateError(f"{label} is unreadable (not valid JSON: {exc})", hint=fix) from exc


def read_json(path: Path, *, what: str, fix: str, limit: int = MAX_STATE_BYTES) -> Any:
    try:
        raw = read_bounded(path, limit=limit)
    except OSError as exc:
        raise StateError(f"cannot read {what} {path}: {exc.strerror or exc}", hint=fix) from exc
    if raw is None:
        return None
    return parse_json(raw, label=f"{what} {path}", fix=fix)


# What a machine state file may hold, by key: the types the code reading it relies on. Unknown
# keys are kept (a newer devenv may add some); a known key of the wrong type is an error.
def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _check_box(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        return "an object"
    for k in ("name", "version", "ref", "digest"):
        if not _opt_str(v.get(k)):
            return f"an object whose {k} is a string"
    baked = v.get("baked", [])
    if not (isinstance(baked, list) and all(isinstance(b, str) for b in baked)):
        return "an object whose baked is a list of strings"
    return None


def _check_steps(v: Any) -> str | None:
    if not isinstance(v, list):
        return "a list"
    for s in v:
        if s is None:
            continue
        if not isinstance(s, dict):
            return "a list of objects"
        if not _opt_str(s.get("fingerprint")) or not _opt_str(s.get("label")):
            return "a list of objects with string fingerprints and labels"
        if s.get("at") is not None and not isinstance(s.get("at"), (int, float)):
            return "a list of objects whose 'at' is a time"
    return None


_STATE_KEYS: dict[str, Any] = {
    "driver": lambda v: None if _is_str(v) else "a string",
    "handle": lambda v: None if v is None or (_is_str(v) and v) else "a non-empty string",
    "box": _check_box,
    "settings": lambda v: None if _opt_str(v) else "a string",
    "identity": lambda v: None if _opt_str(v) else "a string",
    "steps": _check_steps,
    "failed_step": lambda v: None if v is None or (_is_int(v) and v >= 0) else "a step index (0 or more)",
    "created": lambda v: None if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) else "a time",
    "schema": lambda v: None if v is None or _is_int(v) else "an integer",
}


def check_machine_state(data: Any) -> str | None:
    """Why `data` is not a machine state devenv can use (None when it is)."""
    if not isinstance(data, dict):
        return f"not a JSON object but {type(data).__name__}"
    for key, check in _STATE_KEYS.items():
        if key in data:
            why = check(data[key])
            if why:
                return f"'{key}' must be {why}, not {head(json.dumps(data[key]), 60)}"
    return None


class ProjectState:
    """.devenv/ of one project: one JSON file per machine, a folder per machine for its keys."""

    def __init__(self, root: Path, reporter: Reporter = QUIET) -> None:
        self.root = root
        self.dir = root / STATE_DIR
        self.reporter = reporter

    # -- folders, opened without following links -------------------------------------------------
    def _unsafe(self, path: Path, why: str) -> StateError:
        return StateError(
            f"devenv's state folder is unusable: {path} {why}",
            hint=f"devenv never makes links or files there: remove it (`rm -rf {path}`) and run the command again",
        )

    def _open_chain(self, parts: tuple[str, ...], create: bool) -> int | None:
        """A descriptor of .devenv[/PART...], each level opened with O_NOFOLLOW relative to the one
        above (no path is ever resolved again, so a link swapped in meanwhile is not followed
        either); None when a level is missing and create is False. StateError for a link, a
        non-folder or no access."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StateError(
                f"cannot open the project folder {self.root}: {exc.strerror or exc}",
                hint="run devenv as a user who can read and write the project folder",
            ) from exc
        path = self.root
        try:
            for part in (STATE_DIR, *parts):
                path = path / part
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        return None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(nfd, 0o700)  # explicit: never the process umask
                os.close(fd)
                fd = nfd
            out, fd = fd, -1
            return out
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                kind = "is a symbolic link" if os.path.islink(path) else "is not a folder"
                raise self._unsafe(path, kind) from exc
            raise StateError(
                f"cannot use devenv's state folder {path}: {exc.strerror or exc}",
                hint="devenv keeps a project's state in .devenv/ beside its Devfile: run it as a user who can "
                "write the project folder (or make the folder writable)",
            ) from exc
        finally:
            if fd >= 0:
                os.close(fd)

    @contextlib.contextmanager
    def _open(self, *parts: str, create: bool) -> Iterator[int | None]:
        fd = self._open_chain(parts, create)
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    def ensure(self) -> None:
        with self._open(create=True) as fd:
            assert fd is not None
            try:
                os.stat(".gitignore", dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    write_at(fd, ".gitignore", "# written by devenv: local machine state, never commit it\n*\n", 0o644)
                except OSError as exc:  # checked before anything is made: the command stops here
                    raise StateError(
                        f"cannot write devenv's state folder {self.dir}: {exc.strerror or exc}",
                        hint="devenv keeps a project's state in .devenv/ beside its Devfile: run it as a user who "
                        "can write the project folder (or make the folder writable)",
                    ) from exc

    def machine_file(self, name: str) -> Path:
        return self.dir / "machines" / f"{name}.json"

    def _fix(self, name: str) -> str:
        path = self.machine_file(name)
        return (
            f"remove it (`rm {path}`): devenv finds the machine again by its engine labels; "
            f"`devenv destroy {name}` also works with it in place"
        )

    def load(self, name: str) -> dict | None:
        """The machine's state, checked: a StateError (exit 8) names the file and the fix."""
        path = self.machine_file(name)
        with self._open("machines", create=False) as fd:
            if fd is None:
                return None
            try:
                raw = read_bounded(f"{name}.json", limit=MAX_STATE_BYTES, dir_fd=fd)
            except OSError as exc:
                raise StateError(
                    f"cannot read machine state {path}: {exc.strerror or exc}", hint=self._fix(name)
                ) from exc
        if raw is None:
            return None
        data = parse_json(raw, label=f"machine state {path}", fix=self._fix(name))
        why = check_machine_state(data)
        if why:
            raise StateError(f"machine state {path} is unreadable ({why})", hint=self._fix(name))
        return data

    def load_or_none(self, name: str) -> dict | None:
        """For destroy and sweeps: a broken state file must not stop the cleanup."""
        try:
            return self.load(name)
        except StateError as exc:
            self.reporter.warn(f"{exc.message}; ignoring it and finding the machine by its engine labels")
            return None

    def save(self, name: str, data: dict) -> None:
        self.ensure()
        data = {**data, "schema": SCHEMA_VERSION}
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        with self._open("machines", create=True) as fd:
            assert fd is not None
            try:
                write_at(fd, f"{name}.json", text)
            except OSError as exc:
                raise StateError(
                    f"cannot write machine state {self.machine_file(name)}: {exc.strerror or exc}",
                    hint="make .devenv/ writable for this user, or remove it (devenv finds machines by their labels)",
                ) from exc

    def machine_dir(self, name: str) -> Path:
        """Per-machine secrets that are state: its SSH keys and pinned host key (0700)."""
        return self.dir / "machines" / name

    @contextlib.contextmanager
    def machine_dir_fd(self, name: str, *, create: bool = True) -> Iterator[int | None]:
        """A descriptor of machine_dir(name), every level opened without following a link (made,
        0700, with create; None when missing otherwise). Files in it are used relative to it
        (devenv.drivers.vm.identity), never by a path that could be resolved again through a planted link."""
        if not _MACHINE_NAME.fullmatch(name):
            raise StateError(f"'{name}' is not a machine name devenv keeps state for")
        if create:
            self.ensure()
        with self._open("machines", name, create=create) as fd:
            yield fd

    def ensure_machine_dir(self, name: str, *, create: bool = True) -> Path:
        """machine_dir(name), checked to be real folders (no link anywhere below the project) and,
        with create, made (0700). Its path is for ssh's options and the engine's metadata; the
        files in it are read and written only through machine_dir_fd (devenv.drivers.vm.identity)."""
        if create:
            self.ensure()
        with self._open("machines", name, create=create):
            pass
        return self.machine_dir(name)

    def remove(self, name: str) -> None:
        """Forget a machine's state whatever is there; links are removed, never followed."""
        import shutil

        try:
            with self._open("machines", create=False) as fd:
                if fd is None:
                    return
                for entry in (f"{name}.json", name):
                    try:
                        st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(entry, dir_fd=fd)  # fd-based: safe against links inside
                    else:
                        os.unlink(entry, dir_fd=fd)  # a link goes, its target stays
        except StateError as exc:
            self.reporter.warn(f"{exc.message}; left as it is")
        except OSError as exc:
            why = exc.strerror or exc
            self.reporter.warn(f"cannot remove the state of machine '{name}' in {self.dir}: {why}; left as it is")

    def names(self) -> list[str]:
        try:
            with self._open("machines", create=False) as fd:
                if fd is None:
                    return []
                stems = (n[: -len(".json")] for n in os.listdir(fd) if n.endswith(".json"))
                # Only names a machine can have: "..json" must never become remove(".").
                return sorted(n for n in stems if _MACHINE_NAME.fullmatch(n))
        except StateError as exc:
            self.reporter.warn(exc.message)
            return []

    @contextlib.contextmanager
    def lock(self, command: str, *, timeout: float | None = None) -> Iterator[None]:
        """Serialise mutating commands on this project; say so when waiting."""
        self.ensure()
        path = self.dir / "lock"
        with self._open(create=True) as dfd:
            assert dfd is not None
            try:
                fd = os.open(
                    "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=dfd
                )
            except OSError as exc:
                why = "is a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
                raise StateError(
                    f"cannot use the project lock {path}: {why}",
                    hint=f"remove it (`rm -rf {path}`); devenv makes it again"
                    if exc.errno in (errno.ELOOP, errno.EISDIR)
                    else "run devenv as a user who can write .devenv/",
                ) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StateError(
                    f"cannot use the project lock {path}: it is not a regular file",
                    hint=f"remove it (`rm -rf {path}`); devenv makes it again",
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another devenv command"
                holder = "".join(c if c.isprintable() else "?" for c in holder)
                self.reporter.info(None, f"waiting for {holder} to finish on this project ...")
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


def split_machine_dir(folder: Path) -> tuple[Path, str] | None:
    """(project root, machine) when `folder` is a project's .devenv/machines/NAME, else None."""
    if (
        folder.parent.name == "machines"
        and folder.parent.parent.name == STATE_DIR
        and _MACHINE_NAME.fullmatch(folder.name)
    ):
        return folder.parent.parent.parent, folder.name
    return None


def data_dir() -> Path:
    env = os.environ.get("DEVENV_HOME")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("devenv", appauthor=False))


class GlobalIndex:
    """Every machine devenv made on this host, for `devenv global-status`."""

    def __init__(self, base: Path | None = None, reporter: Reporter = QUIET) -> None:
        self.path = (base or data_dir()) / "index.json"
        self.reporter = reporter

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
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

    _FIELDS = ("project_id", "machine", "driver", "handle")

    def _read(self) -> dict:
        fix = f"remove it (`rm {self.path}`); it is rebuilt by `devenv up`"
        try:
            data = read_json(self.path, what="global index", fix=fix, limit=MAX_INDEX_BYTES)
        except StateError as exc:
            self.reporter.warn(exc.message + " — starting a new one")
            return {}
        if data is None:
            return {}
        machines = data.get("machines") if isinstance(data, dict) else None
        if not isinstance(machines, dict):
            self.reporter.warn(
                f"global index {self.path} has the wrong shape (no 'machines' object) — starting a new one"
            )
            return {}
        # Every entry is used as {project_id, machine, driver, handle: str, root/project/devfile: str}:
        # one of another shape is dropped (once, with a warning), never an internal error later.
        good = {}
        for key, e in machines.items():
            if (
                isinstance(e, dict)
                and all(isinstance(e.get(f), str) and e.get(f) for f in self._FIELDS)
                and all(isinstance(e.get(f, ""), str) for f in ("root", "project", "devfile"))
            ):
                good[key] = {**e, "root": e.get("root", ""), "project": e.get("project") or e["project_id"]}
        if len(good) != len(machines):
            self.reporter.warn(
                f"global index {self.path}: ignoring {len(machines) - len(good)} malformed entr"
                + ("y" if len(machines) - len(good) == 1 else "ies")
            )
        return good

    def entries(self) -> list[dict]:
        return sorted(self._read().values(), key=lambda e: (e["root"], e["machine"]))

    def _write(self, data: dict) -> None:
        try:
            atomic_write(self.path, json.dumps({"machines": data}, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise StateError(
                f"cannot write the global index {self.path}: {exc.strerror or exc}",
                hint="set DEVENV_HOME to a folder you can write, or fix that folder's permissions",
            ) from exc

    def record(self, entry: dict) -> None:
        key = f"{entry['project_id']}/{entry['machine']}"
        with self._locked():
            data = self._read()
            data[key] = {**entry, "updated": int(time.time())}
            self._write(data)

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
            self._write(data)


# -- host-reach notices: shown once per project (and again when what reaches the host changes) ------


def first_use_notice(df: Devfile, *, extra_boxes: tuple[str, ...] = ()) -> str | None:
    """The text to show once per project (and again when the list changes), or None."""
    from devenv.model.devfile import host_reach

    return reach_notice(df.root, host_reach(df, extra_boxes=extra_boxes), "this Devfile")


def reach_notice(root: Path, items: list[str], subject: str) -> str | None:
    """``items`` (see host_reach) as a notice, unless already shown for ``root`` with this list.

    Remembered in devenv's own data folder keyed by the project's real path, never in the
    project's .devenv/: a repository could commit a marker there to hide the notice.
    """
    if not items:
        return None
    import json

    digest = hashlib.sha256("\n".join(items).encode()).hexdigest()
    marker = data_dir() / "notices" / (hashlib.sha256(str(root).encode()).hexdigest()[:32] + ".json")
    try:
        seen = json.loads(read_regular(marker, 1 << 20, what="it").decode()).get("shown", [])
        if not isinstance(seen, list):
            seen = []
    except (OSError, ValueError, AttributeError):
        seen = []
    if digest in seen:
        return None
    try:
        atomic_write(marker, json.dumps({"root": str(root), "shown": [*seen, digest][-20:]}) + "\n")
    except OSError:
        pass  # it cannot be remembered: shown again next time, which is the safe side
    lines = "\n".join(f"  {i}" for i in items)
    return (
        f"{subject} reaches this host, not only its machines:\n"
        f"{lines}\n"
        f"  if you did not write {subject}, read what these do before you go on "
        "(devenv says this once for this project, and again when the list changes)"
    )
