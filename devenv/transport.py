"""Run commands and copy files inside a running machine.

A Transport is what provisioners and `ssh`/`exec` see; drivers hand one out. The Docker
transport uses the engine API (exec + archive), so it works against remote engines too.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from devenv.errors import BackendUnavailable, CommandFailed, MachineStateError, UsageError

OutputFn = Callable[[str], None]

# Interactive login shell that prefers bash but works on busybox and distroless-with-sh images.
LOGIN_SHELL = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The environment as it can travel: names a shell can export, values without NUL.

    The error names the variable, never its value (it may be a secret)."""
    out = {}
    for k, v in (env or {}).items():
        if not _ENV_NAME.fullmatch(k):
            raise UsageError(f"env {k!r}: not a variable name (letters, digits, _; not starting with a digit)")
        if "\0" in v:
            raise UsageError(f"env {k}: its value contains a NUL byte, which no environment can hold")
        out[k] = v
    return out


def env_script(argv: list[str], env: Mapping[str, str] | None, workdir: str | None) -> str:
    """A POSIX sh script that enters ``workdir``, exports ``env`` and execs ``argv``.

    It reaches the machine on stdin or in a private file, never on a command line: any local
    user can read every process's argv (``ps``), on the host and in the guest alike.
    """
    lines = []
    if workdir:
        lines.append(f"cd {shlex.quote(workdir)} || exit $?")
    for k, v in check_env(env).items():
        lines.append(f"export {k}={shlex.quote(v)}")
    lines.append("exec " + shlex.join(argv))
    return "\n".join(lines) + "\n"


# -- SSH: the private folder for connection sharing, and paths as OpenSSH reads them ------------------

_SUN_PATH = 104  # bytes in a unix socket address on macOS and the BSDs (Linux: 108)
# What goes below the folder: a subfolder a transport may add ("/v" + 12 hex, PinnedSsh), "/" + %C
# (40 hex), the ".XXXXXXXXXXXXXXXX" ssh appends while it binds the socket, and the final NUL.
_BELOW = 14 + 41 + 17 + 1
_control_cache: dict[tuple, Path] = {}


def _trusted_chain(folder: Path) -> bool:
    """No other user can swap ``folder`` or a folder above it: each is root's or ours, and is
    writable by nobody else (or sticky, like /tmp, where others cannot rename our entries)."""
    uid = os.getuid()
    for p in (folder, *folder.parents):
        try:
            st = os.lstat(p)
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, uid):
            return False
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return False
    return True


def _private_dir(path: Path, *, create: bool) -> bool:
    """True when ``path`` is (made) a real folder of ours, mode exactly 0700, under trusted folders.

    Checked on the opened folder itself (O_NOFOLLOW), so a symlink or a folder someone else made
    in its place is never taken."""
    if not _trusted_chain(path.parent):
        return False
    made = False
    if create:
        try:
            os.mkdir(path, 0o700)
            made = True
        except FileExistsError:
            pass
        except OSError:
            return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            return False
        if made:
            os.fchmod(fd, 0o700)  # mkdir's mode was cut by the umask; just made by us, so ours to set
        elif stat.S_IMODE(st.st_mode) != 0o700:
            return False  # made by someone or something else: whatever is inside is not trusted
        return True
    finally:
        os.close(fd)


def _short_enough(folder: Path) -> bool:
    return len(os.fsencode(str(folder))) + _BELOW <= _SUN_PATH


def control_dir() -> Path:
    """The private folder for ssh's connection-sharing sockets (ControlPath), made on first use.

    Whoever can put a socket there can act as the master connection of every later command (read
    its commands and secrets, forge its output), so it is a folder devenv made: ours, 0700, not a
    link. In order: ``$XDG_RUNTIME_DIR/devenv-ssh`` when that folder is ours and private; else
    ``ssh/`` in devenv's data folder; else (that path too long for a socket address) a private
    mkdtemp folder under the temp folder, whose name is kept in the data folder for later commands.
    """
    from devenv.state import data_dir

    key = (os.environ.get("XDG_RUNTIME_DIR"), os.environ.get("DEVENV_HOME"), os.environ.get("TMPDIR"), os.getuid())
    cached = _control_cache.get(key)
    if cached is not None and _private_dir(cached, create=False):
        return cached
    found = _find_control_dir(data_dir())
    _control_cache[key] = found
    return found


def _find_control_dir(data: Path) -> Path:
    import tempfile

    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        real = Path(os.path.realpath(runtime))
        candidate = real / "devenv-ssh"
        if _short_enough(candidate) and _private_dir(real, create=False) and _private_dir(candidate, create=True):
            return candidate
    try:
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = Path(os.path.realpath(data))
    except OSError:
        data = None  # type: ignore[assignment]
    if data is not None:
        candidate = data / "ssh"
        if _short_enough(candidate) and _private_dir(candidate, create=True):
            return candidate
        pointer = data / "ssh-control-dir"
        try:
            # Only a hint: the folder it names is checked like any other before it is used.
            named = Path(pointer.read_text().strip())
            if named.is_absolute() and _short_enough(named) and _private_dir(named, create=False):
                return named
        except (OSError, ValueError):
            pass
    tmp = Path(os.path.realpath(tempfile.gettempdir()))
    if not (_short_enough(tmp / "devenv-XXXXXXXX") and _trusted_chain(tmp)):
        tmp = Path("/tmp")
    try:
        made = Path(tempfile.mkdtemp(prefix="devenv-", dir=tmp))  # 0700, a name nobody can guess
    except OSError as exc:
        raise CommandFailed(
            f"cannot make a private folder for SSH connection sharing in {tmp}: {exc.strerror or exc}",
            hint="set XDG_RUNTIME_DIR to a folder of yours with mode 0700",
        ) from exc
    if not _private_dir(made, create=False):
        raise CommandFailed(f"the private folder devenv just made ({made}) is not private: refusing to use it")
    if data is not None:
        try:
            fd, tmp_name = tempfile.mkstemp(dir=data, prefix=".ssh-control-dir.")
            with os.fdopen(fd, "w") as f:
                f.write(str(made) + "\n")
            os.replace(tmp_name, pointer)
        except OSError:
            pass  # every command makes its own folder then: slower, still private
    return made


# Characters no ssh option or ssh_config line can carry (a line ends at a newline, and a terminal
# showing `ssh-config` output must not be driven by the path).
_SSH_BAD = re.compile(r"[\x00-\x1f\x7f]")
_SSH_QUOTE = re.compile(r"[\s\"'\\#]")


def ssh_path(path: Path | str, *, what: str = "path") -> str:
    """``path`` written so that OpenSSH reads back exactly it, as an ``-o`` option value or in ssh_config.

    ssh splits an option's value into words (double quotes group them; inside, a backslash escapes
    ``"`` and ``\\``), then expands %-tokens and ``${VAR}`` in IdentityFile, UserKnownHostsFile and
    ControlPath: ``%`` is doubled; ``${`` has no escape, so such a path is refused with a message.
    """
    text = os.fsdecode(path)
    if _SSH_BAD.search(text) or "${" in text:
        from devenv.ui import escape

        shown = escape(text).replace("\n", "\\n")
        raise UsageError(
            f"the {what} {shown} cannot be given to OpenSSH (it holds a control character or '${{')",
            hint="move the project to a folder whose path has neither",
        )
    text = text.replace("%", "%%")
    if _SSH_QUOTE.search(text) or text.startswith("~"):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


# What may stand as a user, host or Host alias on ssh's command line and in an ssh_config line: a
# word that ssh cannot read as an option (no leading '-'), split (no space, quote, '#', newline)
# or expand (no '%', '$'). Looser than the Devfile's USER_NAME_PATTERN (Vagrant names its own
# users), strict enough that `devenv ssh-config` output is only the directives devenv writes.
_SSH_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,252}")
_SSH_V6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")


def ssh_word(value: object, *, what: str, host: bool = False) -> str:
    """``value`` when OpenSSH reads it as exactly one plain value (see _SSH_WORD), else UsageError."""
    if isinstance(value, str) and (_SSH_WORD.fullmatch(value) or (host and _SSH_V6.fullmatch(value))):
        return value
    from devenv.ui import escape

    shown = escape(repr(value))
    raise UsageError(
        f"the SSH {what} {shown} cannot be given to OpenSSH: only letters, digits, '.', '_' and '-' "
        "(not first) are accepted, so that it cannot be read as an option or another directive",
        hint="fix it where it comes from (the Devfile's ssh_user, the box's devenv.json, `vagrant ssh-config`)",
    )


def ssh_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise UsageError(f"the SSH port {value!r} is not a port number (1-65535)")
    return value


class Transport(Protocol):
    def run(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
        on_output: OutputFn | None = None,
        on_stderr: OutputFn | None = None,
    ) -> int:
        """Run argv; stream output lines to on_output (stderr too, unless on_stderr is given).

        Returns the command's exit code."""
        ...

    def put(self, local: Path, remote: str) -> None:
        """Copy a file to the path ``remote``, or a folder's contents into the folder ``remote``."""
        ...

    def get(self, remote: str, local: Path) -> None: ...

    def interactive(
        self,
        argv: list[str] | None,
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
    ) -> int:
        """Attach the user's terminal; argv None means a login shell."""
        ...


class _LineSplitter:
    """Turns a byte stream into complete text lines, so output never mixes half-lines."""

    def __init__(self, sink: OutputFn) -> None:
        self.sink = sink
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self.sink(line.rstrip(b"\r").decode("utf-8", "replace"))

    def close(self) -> None:
        if self.buf:
            self.sink(self.buf.decode("utf-8", "replace"))
            self.buf = b""


_MAX_DEPTH = 512  # folders below a copied folder; deeper is a hostile tree, not a project


def _changed(path: str, why: str) -> CommandFailed:
    return CommandFailed(
        f"cannot copy {path}: {why}; nothing was copied",
        hint="something changed it while devenv read it (the machine, through a synced folder?): run the command again",
    )


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


# Names the docker CLI (a Go program), the dynamic loader or the C library read from their own
# environment: a value under such a name would act on the host process (LD_PRELOAD loads a library,
# DOCKER_HOST redirects the client, HTTPS_PROXY its traffic), so it never goes there.
_CLI_ENV_PREFIXES = ("LD_", "DYLD_", "DOCKER_", "GO", "GLIBC_", "MALLOC_", "SSL_", "XDG_", "LC_", "NOTARY_", "BUILDX_")
_CLI_ENV_NAMES = frozenset(
    "PATH HOME TMPDIR TZ TZDIR LANG LANGUAGE LOCPATH NLSPATH GCONV_PATH HOSTALIASES RES_OPTIONS LOCALDOMAIN "
    "HTTP_PROXY HTTPS_PROXY NO_PROXY ALL_PROXY SHELL USER LOGNAME TERM TERMINFO TERMINFO_DIRS".split()
)


def _check_cli_env_name(name: str) -> None:
    upper = name.upper()
    if upper in _CLI_ENV_NAMES or upper.startswith(_CLI_ENV_PREFIXES) or upper.endswith("_PROXY"):
        raise UsageError(
            f"env {name}: its value has a line break, so it would reach the machine through the host docker"
            " client's own environment, where this name acts on the host process",
            hint="give it a one-line value (e.g. base64) or another name",
        )


class DockerTransport:
    """docker exec + the archive API, streaming output line by line.

    `engine` is a drivers.dockerapi engine (UnixEngine or SdkEngine)."""

    def __init__(self, engine: Any, container_id: str, machine: str, docker_host: str | None = None) -> None:
        self.engine = engine
        self.container_id = container_id
        self.machine = machine
        self.docker_host = docker_host

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            raise BackendUnavailable(
                f"lost the Docker engine while working on '{self.machine}': {exc}",
                hint="check that the engine runs (`docker info`), then run the command again",
            ) from exc

    def run(self, argv, *, env=None, user=None, workdir=None, on_output=None, on_stderr=None) -> int:
        from devenv.drivers.dockerapi import EngineError, exec_config

        splitter = _LineSplitter(on_output or (lambda _line: None))
        # Kept apart when asked, so `devenv ssh -c` output can be piped while errors still show.
        err_splitter = _LineSplitter(on_stderr) if on_stderr is not None else splitter
        try:
            code = self._call(
                self.engine.exec_run,
                self.container_id,
                # The environment travels in the API request body, never on a command line.
                exec_config(list(argv), check_env(env), user, workdir),
                splitter.feed,
                err_splitter.feed,
            )
        except EngineError as exc:
            if exc.status == 404:
                raise MachineStateError(
                    f"machine '{self.machine}' is gone: {exc.message}", hint=f"run `devenv up {self.machine}`"
                ) from exc
            text = exc.message
            if "is not running" in text or "is paused" in text:
                raise MachineStateError(
                    f"machine '{self.machine}' is not running", hint=f"run `devenv up {self.machine}`"
                ) from exc
            if "executable file not found" in text or "no such file or directory" in text:
                return 127
            raise CommandFailed(f"cannot run {shlex.join(argv)} in '{self.machine}': {text}") from exc
        if err_splitter is not splitter:
            err_splitter.close()
        splitter.close()
        return 127 if code is None else int(code)

    def put(self, local: Path, remote: str) -> None:
        from devenv.drivers.dockerapi import EngineError

        data, at = tar_for_put(local, remote)
        try:
            self._call(self.engine.put_archive, self.container_id, at, data)
        except EngineError as exc:
            raise CommandFailed(f"cannot copy {local} to {self.machine}:{remote}: {exc.message}") from exc

    def get(self, remote: str, local: Path) -> None:
        from devenv.drivers.dockerapi import EngineError

        try:
            data = self._call(self.engine.get_archive, self.container_id, remote)
        except EngineError as exc:
            if exc.status == 404:
                raise CommandFailed(f"not found in '{self.machine}': {remote}") from exc
            raise CommandFailed(f"cannot copy {self.machine}:{remote}: {exc.message}") from exc
        extract_from_machine(data, local, self.machine, remote)

    def interactive(self, argv, *, env=None, user=None, workdir=None) -> int:
        docker_cli = shutil.which("docker")
        if docker_cli is None:
            raise BackendUnavailable(
                "an interactive shell needs the docker command-line client, which is not on PATH",
                hint="install it (Debian: apt-get install docker.io) or use `devenv ssh NAME -c CMD`",
            )
        import tempfile

        cmd = [docker_cli, "exec", "-i"]
        if os.isatty(0):
            cmd.append("-t")
        environ = dict(os.environ)
        if self.docker_host:
            environ["DOCKER_HOST"] = self.docker_host
        with tempfile.TemporaryDirectory(prefix="devenv-env-") as tmp:  # 0700, removed after the session
            # `-e K=V` would put every value on the docker client's command line, which any local
            # user reads (`ps`). The values go in a 0600 --env-file instead (the CLI sends them in
            # the API body); the file format is a line per variable, so a value with a line break
            # goes by name only (`-e K`), the CLI taking it from its own (private) environment.
            lines = []
            for k, v in check_env(env).items():
                if "\n" in v or "\r" in v:
                    _check_cli_env_name(k)
                    cmd += ["-e", k]
                    environ[k] = v
                else:
                    lines.append(f"{k}={v}\n")
            if lines:
                env_file = Path(tmp) / "env"
                fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.writelines(lines)
                cmd += ["--env-file", str(env_file)]
            if user:
                cmd += ["-u", user]
            if workdir:
                cmd += ["-w", workdir]
            cmd.append(self.container_id)
            cmd += list(argv) if argv else ["/bin/sh", "-c", LOGIN_SHELL]
            return subprocess.call(cmd, env=environ)


class HostKeyMismatch(CommandFailed):
    exit_code = 12


class SshTransport:
    """The OpenSSH client with the machine's own key and its pinned host key.

    StrictHostKeyChecking=yes against a known_hosts file devenv wrote before the machine
    first booted; connections are multiplexed (ControlMaster) so repeated commands skip the
    handshake.
    """

    def __init__(
        self, *, machine: str, host: str, port: int, user: str, key: Path, known_hosts: Path, connect_timeout: int = 10
    ) -> None:
        self.machine = machine
        # Checked once here, for every way these reach ssh (argv, -o, ssh_config, rsync -e).
        self.host = ssh_word(host, what="host", host=True)
        self.port = ssh_port(port)
        self.user = ssh_word(user, what="user")
        self.key = key
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout

    def _control_dir(self) -> Path:
        return control_dir()

    def control_path(self) -> str:
        """The ControlPath option value: a socket per connection (%C) in devenv's private folder."""
        return ssh_path(self._control_dir(), what="connection-sharing folder") + "/%C"

    def options(self) -> list[str]:
        return [
            "-F",
            "/dev/null",
            "-o",
            f"UserKnownHostsFile={ssh_path(self.known_hosts, what='known_hosts file')}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"IdentityFile={ssh_path(self.key, what='SSH key')}",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={self.control_path()}",
            "-o",
            "ControlPersist=120",
            "-o",
            "LogLevel=ERROR",
            "-p",
            str(self.port),
            "-l",
            self.user,
        ]

    def _as_user(self, sh_args: str, user: str | None) -> str:
        """The remote command line running ``/bin/sh SH_ARGS`` as ``user`` (default: the login user)."""
        if user and user != self.user:
            if self.user == "root":
                return f"su -s /bin/sh {shlex.quote(user)} -c {shlex.quote('exec /bin/sh ' + sh_args)}"
            return f"sudo -n -u {shlex.quote(user)} -- /bin/sh {sh_args}"
        if self.user != "root" and user == "root":
            return f"sudo -n -- /bin/sh {sh_args}"
        return f"/bin/sh {sh_args}"

    def _upload_script(self, script: str, user: str | None) -> str:
        """Put ``script`` in a new 0600 file in the machine, owned by ``user``; returns its path.

        For sessions whose stdin is the user's terminal: the environment cannot come on stdin
        there, and a command line is readable by everyone. The script removes itself first."""
        make = (
            'umask 077; f=$(mktemp 2>/dev/null) || { f=/tmp/.devenv-env.$$; set -C; : > "$f" || exit 1; }; '
            'cat >> "$f" && printf "%s\\n" "$f"'
        )
        out = self._pipe(self._as_user(f"-c {shlex.quote(make)}", user), script.encode())
        path = out.decode(errors="replace").strip()
        if not path.startswith("/") or "\n" in path:
            raise CommandFailed(f"cannot pass the environment to '{self.machine}': mktemp said {path!r}")
        return path

    def _ssh(self, remote: str | None, *, tty: bool = False) -> list[str]:
        argv = ["ssh", *self.options()]
        argv.append("-t" if tty else "-T")
        argv.append(self.host)
        if remote is not None:
            argv += ["--", remote]
        return argv

    def _check_ssh_failure(self, code: int, stderr: str) -> None:
        if code != 255:
            return
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "Host key verification failed" in stderr:
            raise HostKeyMismatch(
                f"machine '{self.machine}' presented a host key that does not match the one devenv pinned "
                f"({self.known_hosts}): refusing to connect",
                hint="if you rebuilt the machine outside devenv, `devenv destroy` and `devenv up` it; "
                "otherwise something is answering in its place",
            )
        raise CommandFailed(
            f"cannot reach machine '{self.machine}' over SSH at {self.host}:{self.port}: "
            f"{stderr.strip().splitlines()[-1] if stderr.strip() else 'ssh exited 255'}",
            hint=f"is it running? `devenv status {self.machine}`",
        )

    def run(self, argv, *, env=None, user=None, workdir=None, on_output=None, on_stderr=None) -> int:
        import selectors
        import threading

        # The command, its folder and its environment go on stdin to a fixed `/bin/sh -s`: no
        # command line on the host or in the guest carries a value. The command's own stdin is
        # what follows the script: nothing (EOF), as /dev/null was.
        script = env_script(list(argv), env, workdir).encode()
        proc = subprocess.Popen(
            self._ssh(self._as_user("-s", user)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None

        def feed() -> None:
            try:
                proc.stdin.write(script)  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass  # ssh ended early (unreachable): its exit code and stderr say why

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        out = _LineSplitter(on_output or (lambda _line: None))
        err_lines: list[str] = []

        def err_sink(line: str) -> None:
            err_lines.append(line)
            (on_stderr or on_output or (lambda _line: None))(line)

        err = _LineSplitter(err_sink)
        sel = selectors.DefaultSelector()
        assert proc.stdout is not None and proc.stderr is not None
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        open_streams = 2
        while open_streams:
            for key, _ in sel.select():
                data = os.read(key.fileobj.fileno(), 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                key.data.feed(data)
        out.close()
        err.close()
        code = proc.wait()
        writer.join()
        self._check_ssh_failure(code, "\n".join(err_lines[-5:]))
        return code

    def _pipe(self, remote: str, data: bytes | None = None) -> bytes:
        r = subprocess.run(self._ssh(remote), input=data, capture_output=True)
        self._check_ssh_failure(r.returncode, r.stderr.decode(errors="replace"))
        if r.returncode != 0:
            raise CommandFailed(f"{remote!r} failed in '{self.machine}': {r.stderr.decode(errors='replace').strip()}")
        return r.stdout

    def put(self, local: Path, remote: str) -> None:
        data, at = tar_for_put(local, remote)
        prefix = "" if self.user == "root" else "sudo -n "
        self._pipe(f"{prefix}tar -x -C {shlex.quote(at)} -f -", data)

    def put_tree(self, local: Path, remote: str, *, exclude: tuple[str, ...] = ()) -> None:
        """Sync a folder into the machine: rsync when both ends have it (incremental), else a tar copy."""
        has_rsync = shutil.which("rsync") and self.run(["/bin/sh", "-c", "command -v rsync"]) == 0
        if has_rsync:
            ssh_cmd = shlex.join(["ssh", *self.options()])
            argv = [
                "rsync",
                "-a",
                "--delete",
                "-e",
                ssh_cmd,
                *[f"--exclude={e}" for e in exclude],
                f"{local}/",
                f"{self.host}:{remote.rstrip('/')}/",
            ]
            if self.user != "root":
                argv[1:1] = ["--rsync-path", "sudo -n rsync"]
            self._pipe(f"mkdir -p {shlex.quote(remote)}") if self.user == "root" else self._pipe(
                f"sudo -n mkdir -p {shlex.quote(remote)}"
            )
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode != 0:
                from devenv.ui import tail

                raise CommandFailed(f"rsync to {self.machine}:{remote} failed: {tail(r.stderr.strip(), 500)}")
            return
        data, at = tar_for_put(local, remote, exclude)
        prefix = "" if self.user == "root" else "sudo -n "
        self._pipe(f"{prefix}tar -x -C {shlex.quote(at)} -f -", data)

    def get(self, remote: str, local: Path) -> None:
        parent, name = str(PurePosixPath(remote).parent), PurePosixPath(remote).name
        data = self._pipe(f"tar -c -C {shlex.quote(parent)} -f - {shlex.quote(name)}")
        extract_from_machine(data, local, self.machine, remote)

    def interactive(self, argv, *, env=None, user=None, workdir=None) -> int:
        env = check_env(env)
        remote: str | None = None
        uploaded: str | None = None
        if argv or env or workdir or (user and user != self.user):
            script = env_script(list(argv) if argv else ["/bin/sh", "-c", LOGIN_SHELL], env, workdir)
            if env:
                # stdin is the user's (terminal or pipe): the environment goes in a private file
                # the session runs and removes at once; the command line names only that file.
                uploaded = self._upload_script('rm -f -- "$0"\n' + script, user)
                remote = self._as_user(shlex.quote(uploaded), user)
            else:
                remote = self._as_user(f"-c {shlex.quote(script)}", user)
        try:
            tty = os.isatty(0)
            if tty:
                # ssh owns the terminal and prints its own reason on failure (255).
                return subprocess.call(self._ssh(remote, tty=True))
            r = subprocess.run(self._ssh(remote, tty=False), stderr=subprocess.PIPE)
            if r.returncode == 255:
                self._check_ssh_failure(255, r.stderr.decode(errors="replace"))
            elif r.stderr:
                os.write(2, r.stderr)
            return r.returncode
        finally:
            if uploaded is not None:
                # Already gone when the session started; this covers one that never did.
                try:
                    self._pipe(self._as_user(f"-c {shlex.quote('rm -f -- ' + shlex.quote(uploaded))}", user))
                except CommandFailed:
                    pass

    def ssh_config(self, alias: str) -> str:
        """A Host block for `ssh -F` and VS Code Remote-SSH, with the same pinning.

        Users append it to ~/.ssh/config: every value is re-checked here (a newline in one would
        add directives such as ProxyCommand, i.e. host code execution), the paths are quoted."""
        return "\n".join(
            [
                f"Host {ssh_word(alias, what='Host alias')}",
                f"  HostName {ssh_word(self.host, what='host', host=True)}",
                f"  Port {ssh_port(self.port)}",
                f"  User {ssh_word(self.user, what='user')}",
                f"  IdentityFile {ssh_path(self.key, what='SSH key')}",
                "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {ssh_path(self.known_hosts, what='known_hosts file')}",
                "  StrictHostKeyChecking yes",
                "  PasswordAuthentication no",
                "  LogLevel ERROR",
                "",
            ]
        )


class EnvTransport:
    """Adds the machine's environment to every command, for drivers that cannot set it at create.

    The values (secrets included) travel with each command and are never written on the host.
    """

    def __init__(self, inner: Transport, env: Mapping[str, str]) -> None:
        self.inner = inner
        self.env = dict(env)

    def run(self, argv, *, env=None, user=None, workdir=None, on_output=None, on_stderr=None) -> int:
        return self.inner.run(
            argv, env={**self.env, **(env or {})}, user=user, workdir=workdir, on_output=on_output, on_stderr=on_stderr
        )

    def put(self, local: Path, remote: str) -> None:
        self.inner.put(local, remote)

    def get(self, remote: str, local: Path) -> None:
        self.inner.get(remote, local)

    def interactive(self, argv, *, env=None, user=None, workdir=None) -> int:
        return self.inner.interactive(argv, env={**self.env, **(env or {})}, user=user, workdir=workdir)

    def __getattr__(self, item):
        return getattr(self.inner, item)
