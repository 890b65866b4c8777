"""Files into and out of a machine as checked tar streams: links copied as links, never followed."""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from devenv.errors import CommandFailed
from devenv.paths import open_nofollow

_MAX_DEPTH = 512  # folders below a copied folder; deeper is a hostile tree, not a project


def _changed(path: str, why: str) -> CommandFailed:
    return CommandFailed(
        f"cannot copy {path}: {why}; nothing was copied",
        hint="something changed it while devenv read it (the machine, through a synced folder?): run the command again",
    )


def _read_fd(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def tar_for_put(local: Path, remote: str, exclude: tuple[str, ...] = ()) -> tuple[bytes, str]:
    """A tar to extract at '/', putting ``local`` (a real path) at ``remote`` (parents created by the engine).

    ``exclude``: fnmatch patterns matched against paths relative to ``local`` (and their names).

    The folder may be written while it is packed, by the machine itself (a read-write sync of the
    project): an entry can flip between a file and a link to a host file. So nothing is opened by
    name twice: ``local`` is opened without following any link on its path, every entry below
    is opened relative to its folder's descriptor with O_NOFOLLOW, and what goes in the tar
    (kind, size, mode, bytes) comes from that one descriptor. A link is kept as a link, never
    followed; a device, FIFO or socket goes in as its kind, never opened.
    """
    import fnmatch

    def excluded(rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(name, pat) for pat in exclude)

    dest = PurePosixPath(remote)
    if not dest.is_absolute():
        raise CommandFailed(f"destination must be an absolute path in the machine: {remote}")
    buf = io.BytesIO()
    base = str(dest).lstrip("/")
    shown = os.fspath(local)

    def info_for(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
        info = tarfile.TarInfo(arcname)
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        # Files land owned by root, as with `cp` by root: host uids mean nothing in the machine.
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def add_fd(tar: tarfile.TarFile, fd: int, arcname: str) -> bool:
        """Add what ``fd`` is; True when it is a folder (the caller walks it)."""
        st = os.fstat(fd)
        info = info_for(arcname, st)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            return True
        if stat.S_ISREG(st.st_mode):
            data = _read_fd(fd)
            info.size = len(data)  # what was read, so a file that grew or shrank stays one consistent member
            tar.addfile(info, io.BytesIO(data))
            return False
        special(tar, info, st)
        return False

    def special(tar: tarfile.TarFile, info: tarfile.TarInfo, st: os.stat_result) -> None:
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        else:
            return  # a socket: tar has no such member
        tar.addfile(info)

    def add_entry(tar: tarfile.TarFile, dir_fd: int, name: str, arcname: str, rel: str) -> int | None:
        """Add one entry of a folder; its descriptor when it is a folder to walk (else None)."""
        for _attempt in range(5):
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return None  # gone since the listing: nothing to copy
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    return None
                except OSError:
                    continue  # no longer a link: look again
                info = info_for(arcname, st)
                info.type = tarfile.SYMTYPE
                info.linkname = target
                tar.addfile(info)
                return None
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                special(tar, info_for(arcname, st), st)  # never opened: opening a device can act on it
                return None
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK):
                    continue  # a link was swapped in after the lstat: look again, never follow it
                raise _changed(f"{shown}/{rel}", exc.strerror or str(exc)) from None
            try:
                if add_fd(tar, fd, arcname):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            return None
        raise _changed(f"{shown}/{rel}", "it kept changing between a file and a link")

    try:
        top = open_nofollow(local)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _changed(shown, "a symbolic link is now on its path") from None
        raise CommandFailed(f"cannot copy {shown}: {exc.strerror or exc}") from None

    def listing(fd: int, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(fd), reverse=True)  # popped from the end: in name order
        except OSError as exc:
            raise CommandFailed(f"cannot copy {shown}/{rel}: {exc.strerror or exc}") from None

    # Depth first with an explicit stack (a deep tree is no RecursionError): one descriptor per
    # level, each entry opened relative to its folder's descriptor.
    stack: list[tuple[int, str, list[str]]] = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        try:
            is_dir = add_fd(tar, top, base)
            if is_dir:
                stack.append((top, "", listing(top, "")))
            else:
                os.close(top)
            top = -1
            while stack:
                dfd, rel_dir, names = stack[-1]
                if not names:
                    os.close(dfd)
                    stack.pop()
                    continue
                name = names.pop()
                rel = f"{rel_dir}{name}"
                if excluded(rel):
                    continue
                child = add_entry(tar, dfd, name, f"{base}/{rel}", rel)
                if child is not None:
                    stack.append((child, f"{rel}/", []))
                    if len(stack) > _MAX_DEPTH:
                        raise CommandFailed(f"cannot copy {shown}: folders nested deeper than {_MAX_DEPTH}")
                    stack[-1] = (child, f"{rel}/", listing(child, rel))
        except OSError as exc:
            raise CommandFailed(f"cannot copy {shown}: {exc.strerror or exc}") from None
        finally:
            if top >= 0:
                os.close(top)
            for dfd, _rel, _names in stack:
                os.close(dfd)
    return buf.getvalue(), "/"


def extract_from_machine(data: bytes, local: Path, machine: str, remote: str) -> None:
    """Unpack a tar a machine sent (`get`): one file, or a folder whose top entry is stripped.

    What comes out of a machine is hostile input (its root may be anyone's), and tarfile's
    `filter=` is neither in every Python 3.11 nor free of bypasses: only folders and regular
    files are written, each name checked to stay below `local`, each file opened with
    O_NOFOLLOW; links, devices and fifos are refused before anything is written.
    """

    def refuse(why: str) -> CommandFailed:
        return CommandFailed(f"cannot copy {machine}:{remote}: {why}; nothing was copied")

    def write_file(dir_fd: int | None, name: str, src) -> None:
        # O_NOFOLLOW: a link planted at the destination (a dangling one too) is refused, not followed.
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as out, src:
            shutil.copyfileobj(src, out)

    def open_dir(dir_fd: int, name: str) -> int:
        # Each folder on the way is made and entered relative to its parent, never through a link.
        try:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        except FileExistsError:
            pass
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)

    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            if len(members) == 1 and members[0].isfile():
                f = tar.extractfile(members[0])
                assert f is not None
                write_file(None, os.fspath(local), f)
                return
            plan: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
            for m in members:
                parts = PurePosixPath(m.name).parts[1:]  # the top folder is the remote folder itself
                if not parts:
                    continue
                if PurePosixPath(m.name).is_absolute() or any(p in ("..", "", ".") for p in parts):
                    raise refuse(f"the machine sent an entry named {m.name!r} that leaves the folder")
                if not (m.isdir() or m.isfile()):
                    raise refuse(f"{m.name!r} is a link, device or fifo; only files and folders are copied")
                plan.append((m, PurePosixPath(*parts)))
            local.mkdir(parents=True, exist_ok=True)  # the folder the user named: theirs to point anywhere
            root_fd = os.open(local, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for m, rel in plan:
                    fds: list[int] = []
                    try:
                        cur = root_fd
                        for d in rel.parts if m.isdir() else rel.parts[:-1]:
                            cur = open_dir(cur, d)
                            fds.append(cur)
                        if m.isfile():
                            f = tar.extractfile(m)
                            assert f is not None
                            write_file(cur, rel.parts[-1], f)
                    finally:
                        for fd in fds:
                            os.close(fd)
            finally:
                os.close(root_fd)
    except (tarfile.TarError, EOFError) as exc:
        raise refuse(f"the machine sent an unreadable archive ({exc})") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
            raise refuse("a symbolic link or a file is in the way on this host (links are never followed)") from None
        raise refuse(exc.strerror or str(exc)) from None
