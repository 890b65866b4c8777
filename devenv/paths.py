"""Host paths a Devfile names, confined to the project by their real location.

The inside-the-project rule is about where the kernel will really go, not how the path reads:
every symbolic link (the last component, a folder on the way, a relative link that climbs out, a
link to /) is followed as the kernel follows it, and the result must lie inside the project's
real root unless the entry says ``allow_outside_project = true``. The resolver is our own (not
``os.path.realpath``) so that a loop or a long chain of links ends in one clear message, with
the kernel's own limit of 40 links, instead of an OSError or a RecursionError.

Callers check at validation and again at use: a link can be swapped in between (a machine with
the project synced read-write can make one). A hard link cannot be told from the file it names,
so a hard-linked file is outside this check (a documented limit).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devenv.errors import DevfileError

MAX_LINKS = 40  # Linux's MAXSYMLINKS: the kernel gives up (ELOOP) after as many


class ConfinementError(DevfileError):
    """A host path the Devfile names is outside the project, missing, or not of the kind needed."""


@dataclass(frozen=True)
class Resolved:
    path: str  # the real path (as far as it exists; the missing rest appended as written)
    exists: bool
    via: tuple[str, str] | None = None  # the first link whose target left the root: (link, target)
    error: str | None = None  # a loop or an unreadable folder on the way


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve(path: str | os.PathLike, root: str | None = None, *, start: str = "/") -> Resolved:
    """The real path of a path, following links like the kernel (no exceptions).

    A relative path starts at ``start`` (a real folder: the project root), else at the cwd.
    With ``root``, also the first link on the way that leads outside it, to name in messages.
    """
    text = os.fspath(path)
    if not text.startswith("/"):
        if start == "/":
            text = os.path.join(os.getcwd(), text)
        else:
            text = os.path.join(start, text)
    done = "/"
    if start != "/" and text.startswith(start.rstrip("/") + "/"):
        done, text = start, text[len(start) :]
    todo = [p for p in reversed(text.split("/")) if p]  # a stack: the next component last
    links = 0
    via: tuple[str, str] | None = None
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            done = os.path.dirname(done)
            continue
        nxt = os.path.join(done, part)
        try:
            st = os.lstat(nxt)
        except (FileNotFoundError, NotADirectoryError):
            rest = os.path.normpath(os.path.join(nxt, *reversed(todo)))
            return Resolved(rest, False, via)
        except OSError as exc:
            return Resolved(nxt, False, via, f"cannot read {nxt}: {exc.strerror or exc}")
        if not stat.S_ISLNK(st.st_mode):
            done = nxt
            continue
        links += 1
        if links > MAX_LINKS:
            return Resolved(nxt, False, via, f"too many levels of symbolic links at {nxt} (a link loop?)")
        try:
            target = os.readlink(nxt)
        except OSError as exc:
            return Resolved(nxt, False, via, f"cannot read the link {nxt}: {exc.strerror or exc}")
        if target.startswith("/"):
            done = "/"
        todo.extend(p for p in reversed(target.split("/")) if p)
        if root is not None and via is None and _inside(nxt, root):
            # Where this one link lands (alone): outside the root means this link is the way out.
            landed = resolve(os.path.join(os.path.dirname(nxt), target))
            if not _inside(landed.path, root):
                via = (nxt, target)
    return Resolved(done, True, via)


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return resolve(root).path


def real_root(root: str | os.PathLike) -> str:
    """The project root's real path (cached: a Devfile with many entries resolves it once)."""
    return _real_root(os.path.abspath(os.fspath(root)))


def confine(
    root: str | os.PathLike,
    rel: str,
    *,
    allow_outside: bool = False,
    kind: str = "any",
    what: str = "entry",
    fix: str | None = None,
) -> Path:
    """The real path of ``rel`` (relative to ``root``, ``~`` expanded), required inside the root.

    kind: "file" (a regular file), "dir" (a folder), "any" (a regular file or a folder) or
    "none" (need not exist). ``what`` names the thing that may carry allow_outside_project
    ("entry", "step"); ``fix`` replaces that advice. Raises ConfinementError with the message a
    Problem carries.
    """
    base = real_root(root)
    expanded = os.path.expanduser(rel)
    r = resolve(expanded, base, start=base)
    if r.error:
        raise ConfinementError(f"'{rel}': {r.error}")
    if not allow_outside and not _inside(r.path, base):
        how = ""
        if r.via:
            link, target = r.via
            shown = os.path.relpath(link, base) if _inside(link, base) else link
            how = f": '{shown}' is a symbolic link to '{target}'"
        raise ConfinementError(
            f"'{rel}' is outside the project ({base}){how}; "
            + (fix or f"set allow_outside_project = true on this {what} if you mean it")
        )
    if kind == "none":
        return Path(r.path)
    if not r.exists:
        raise ConfinementError(("folder" if kind == "dir" else "file") + f" not found: {rel}")
    try:
        st = os.stat(r.path)
    except OSError as exc:
        raise ConfinementError(f"'{rel}': cannot read it: {exc.strerror or exc}") from exc
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        raise ConfinementError(f"folder not found: {rel} (it is not a folder)")
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        raise ConfinementError(f"'{rel}' is not a regular file" + _kind_of(st.st_mode))
    if kind == "any" and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ConfinementError(f"'{rel}' is neither a regular file nor a folder" + _kind_of(st.st_mode))
    return Path(r.path)


def _kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return f" (it is {name})"
    return ""


def walk(top: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under a folder (not the folder itself), sorted, by lstat: links are never followed."""
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        subdirs = []
        for n in names:
            p = d / n
            try:
                st = os.lstat(p)
            except OSError:
                continue
            yield p, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(p)
        stack.extend(reversed(subdirs))


def escaping_links(top: Path, root: str | os.PathLike, *, limit: int = 5) -> list[tuple[Path, str]]:
    """Links under ``top`` (or ``top`` itself) whose target is outside the project root: (link, target)."""
    base = real_root(root)
    out: list[tuple[Path, str]] = []
    entries: list[tuple[Path, os.stat_result]] = []
    try:
        entries.append((top, os.lstat(top)))
    except OSError:
        return out
    if stat.S_ISDIR(entries[0][1].st_mode):
        entries = walk(top)  # type: ignore[assignment]
    for p, st in entries:
        if stat.S_ISLNK(st.st_mode):
            r = resolve(p, base)
            if r.error or not _inside(r.path, base):
                try:
                    target = os.readlink(p)
                except OSError:
                    target = "?"
                out.append((p, target))
                if len(out) >= limit:
                    break
    return out


def read_regular(path: str | os.PathLike, cap: int, *, what: str) -> bytes:
    """A regular file's bytes, at most ``cap``: never blocks on a FIFO, never reads /dev/zero forever.

    Raises OSError with a strerror that reads as a reason (the callers quote it).
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, f"{what} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{what} is not a regular file{_kind_of(st.st_mode)}")
        too_big = OSError(errno.EFBIG, f"{what} is larger than {_size(cap)}")
        if st.st_size > cap:
            raise too_big
        chunks = []
        left = cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > cap:
            raise too_big
        return data
    finally:
        os.close(fd)


def _size(n: int) -> str:
    return f"{n // (1 << 20)} MiB" if n >= 1 << 20 else f"{n // 1024} KiB"


def write_new_file(path: Path, text: str, *, force: bool = False, hint: str = "pass --force to overwrite it") -> None:
    """Write a file the user asked for (``init``, ``import-vagrant -o``), never through a link.

    Without ``force`` it must not exist in any form: O_CREAT|O_EXCL|O_NOFOLLOW refuses a planted
    link (even a dangling one, which exists() calls absent and a plain open would follow to create
    its target). With ``force`` the file is written under a random name beside it and moved over
    ``path``: a link there is replaced, never written through.
    """
    import tempfile

    from devenv.errors import UsageError

    data = text.encode()
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            what = " (a symbolic link)" if os.path.islink(path) else ""
            raise UsageError(f"{path} already exists{what}", hint=hint) from None
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), 0o644)  # explicit, never the process umask
        return
    parent = os.path.dirname(os.fspath(path)) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def open_nofollow(path: str | os.PathLike, flags: int = os.O_RDONLY) -> int:
    """Open a real path one component at a time, never following a symbolic link (openat, O_NOFOLLOW).

    Callers hand the real path they just confined; whoever can write in the project (a machine
    through a read-write sync) may put a link on that path in between, and a plain open() would
    follow it to a host file. Here any link on the way fails (OSError ELOOP / ENOTDIR) instead.
    O_NONBLOCK: a FIFO put there never blocks the open.
    """
    text = os.path.abspath(os.fspath(path))
    parts = [p for p in text.split("/") if p]
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        if not parts:
            return os.dup(fd)
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
