"""Per-machine SSH identity: a client key pair and a host key pair, made by devenv.

The host key is generated here and handed to the guest at first boot (NoCloud seed), so the
first connection already knows which key to expect: the known_hosts file is written before
the machine exists and ssh runs with StrictHostKeyChecking=yes. No trust on first use.

The key folder is .devenv/machines/NAME/, inside a folder a repository controls (and git
overwrites ignored files on checkout), so nothing found there is trusted: every file is opened
relative to the folder's descriptor (the folder chain itself opened without following links),
with O_NOFOLLOW, and used only when it is a regular file of bounded size with one link, owned by
this user. Anything else there (a symbolic link, dangling or not, a hard link, a FIFO, a folder)
is a StateError naming it: devenv never follows, reads, writes through or chmods it. New keys are
made by ssh-keygen in a fresh private temp folder and moved in with O_EXCL temp files renamed into
place, so no path in the key folder is ever handed to ssh-keygen.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devenv.errors import BackendUnavailable, CommandFailed, StateError
from devenv.state import read_fd

CLIENT_KEY = "id_ed25519"
HOST_KEY = "ssh_host_ed25519_key"
KNOWN_HOSTS = "known_hosts"
# Every name devenv keeps in a key folder (the Vagrant driver adds vagrant.json, read on its own).
KEY_FILES = (CLIENT_KEY, CLIENT_KEY + ".pub", HOST_KEY, HOST_KEY + ".pub", KNOWN_HOSTS)
MAX_KEY_BYTES = 16 << 10  # an ed25519 key file is ~400 bytes
MAX_KNOWN_HOSTS_BYTES = 64 << 10

_PUBLIC = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]+={0,2}(?: [^\r\n]*)?")
_PRIVATE = re.compile(
    r"-----BEGIN OPENSSH PRIVATE KEY-----\n(?:[A-Za-z0-9+/=]+\n)+-----END OPENSSH PRIVATE KEY-----\n?"
)


def is_public_key(text: str) -> bool:
    """One ed25519 public key line (type, key, an optional comment), nothing else."""
    return _PUBLIC.fullmatch(text.strip()) is not None


def is_private_key(text: str) -> bool:
    """One OpenSSH private key block, nothing else."""
    return _PRIVATE.fullmatch(text) is not None


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _what(folder: Path, name: str, dfd: int) -> str:
    """What the entry `name` is, in words, for an error message (never following it)."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except OSError:
        return "not a regular file"
    if stat.S_ISLNK(st.st_mode):
        try:
            return f"a symbolic link (to {os.readlink(name, dir_fd=dfd)})"
        except OSError:
            return "a symbolic link"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket"
    if stat.S_ISDIR(st.st_mode):
        return "a folder"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device"
    return "not a regular file"


def _refuse(folder: Path, name: str, what: str) -> StateError:
    return StateError(
        f"the machine's key folder {folder} holds {name}, which is {what}: devenv never makes that there "
        "and does not follow, read or write it",
        hint=f"something other than devenv put it there (a checkout, another program): look at it, then remove "
        f"the folder (`rm -rf {folder}`); `devenv up` makes new keys (an existing machine needs "
        "`devenv destroy` first)",
    )


def _fstat_ok(fd: int, folder: Path, name: str, dfd: int) -> os.stat_result:
    """The stat of an opened entry, when it is a file devenv can have made; StateError otherwise."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(folder, name, _what(folder, name, dfd))
    if st.st_nlink != 1:  # a hard link shares its content with a file elsewhere
        raise _refuse(folder, name, f"a hard link ({st.st_nlink} names for one file)")
    if st.st_uid != os.geteuid():
        raise _refuse(folder, name, f"a file of another user (uid {st.st_uid})")
    return st


def _open_entry(dfd: int, folder: Path, name: str) -> int | None:
    """A descriptor of the file `name` in the folder `dfd`, checked; None when there is none."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EOPNOTSUPP):
            raise _refuse(folder, name, _what(folder, name, dfd)) from None
        raise StateError(f"cannot read {folder / name}: {exc.strerror or exc}") from exc
    try:
        _fstat_ok(fd, folder, name, dfd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_entry(dfd: int, folder: Path, name: str, limit: int) -> bytes | None:
    fd = _open_entry(dfd, folder, name)
    if fd is None:
        return None
    try:
        return read_fd(fd, limit)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise _refuse(folder, name, f"larger than the {limit} bytes a key file can be") from None
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def _folder_fd(folder: Path, *, create: bool) -> Iterator[int | None]:
    """A descriptor of the key folder, opened without following a link; None when it is missing
    (and create is False).

    For .devenv/machines/NAME of a project, every level below the project folder is opened with
    O_NOFOLLOW relative to the one above (ProjectState); elsewhere (a Vagrant machine's own folder)
    the folder itself must not be a link."""
    from devenv.state import ProjectState, split_machine_dir

    found = split_machine_dir(folder)
    if found is not None:
        root, name = found
        with ProjectState(root).machine_dir_fd(name, create=create) as fd:
            yield fd
        return
    if create:
        folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    try:
        fd = os.open(folder, _DIR_FLAGS)
    except FileNotFoundError:
        if create:
            raise
        yield None
        return
    except OSError as exc:
        why = "is a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise StateError(
            f"cannot use the machine's key folder {folder}: {why}",
            hint=f"devenv never makes links there: remove it (`rm -rf {folder}`) and run the command again",
        ) from exc
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _existing_folder_fd(folder: Path) -> Iterator[int]:
    with _folder_fd(folder, create=False) as fd:
        if fd is None:
            raise StateError(
                f"the machine's key folder {folder} is missing",
                hint="its .devenv/ folder was removed: `devenv destroy` and `devenv up` it to make a new identity",
            )
        yield fd


def _text(raw: bytes, folder: Path, name: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise _refuse(folder, name, "not an OpenSSH key (not ASCII text)") from None


@dataclass(frozen=True)
class MachineKeys:
    """The key folder of one machine; paths for ssh, checked content for everything devenv reads."""

    folder: Path

    @property
    def client_key(self) -> Path:
        return self.folder / CLIENT_KEY

    @property
    def host_key(self) -> Path:
        return self.folder / HOST_KEY

    @property
    def known_hosts(self) -> Path:
        return self.folder / KNOWN_HOSTS

    def _public(self, name: str) -> str:
        with _existing_folder_fd(self.folder) as dfd:
            raw = _read_entry(dfd, self.folder, name, MAX_KEY_BYTES)
        if raw is None:
            raise StateError(
                f"the machine's public key {self.folder / name} is missing",
                hint="`devenv up` makes the machine's keys again (an existing machine needs `devenv destroy` first)",
            )
        text = _text(raw, self.folder, name).strip()
        if not is_public_key(text):
            raise _refuse(self.folder, name, "not an ed25519 public key")
        return text

    @property
    def client_pub(self) -> str:
        return self._public(CLIENT_KEY + ".pub")

    @property
    def host_pub(self) -> str:
        return self._public(HOST_KEY + ".pub")

    @property
    def host_private(self) -> str:
        """The host's private key, for the seed: read only from a file devenv can have made."""
        with _existing_folder_fd(self.folder) as dfd:
            raw = _read_entry(dfd, self.folder, HOST_KEY, MAX_KEY_BYTES)
        if raw is None:
            raise StateError(
                f"the machine's host key {self.host_key} is missing",
                hint="`devenv up` makes the machine's keys again (an existing machine needs `devenv destroy` first)",
            )
        text = _text(raw, self.folder, HOST_KEY)
        if not is_private_key(text):
            raise _refuse(self.folder, HOST_KEY, "not an OpenSSH private key")
        return text

    def check(self) -> bool:
        """Before ssh is handed these paths: every key file present is one devenv can have made
        (StateError otherwise); True when the client key is there."""
        with _folder_fd(self.folder, create=False) as dfd:
            if dfd is None:
                return False
            present = False
            for name in KEY_FILES:
                fd = _open_entry(dfd, self.folder, name)
                if fd is not None:
                    os.close(fd)
                    present = present or name == CLIENT_KEY
            return present

    def read_known_hosts(self) -> bytes:
        """The pinned entries (b"" when none), read without following a link."""
        with _folder_fd(self.folder, create=False) as dfd:
            if dfd is None:
                return b""
            return _read_entry(dfd, self.folder, KNOWN_HOSTS, MAX_KNOWN_HOSTS_BYTES) or b""

    def write_known_hosts(self, data: bytes | str) -> None:
        from devenv.state import write_at

        with _folder_fd(self.folder, create=True) as dfd:
            assert dfd is not None
            fd = _open_entry(dfd, self.folder, KNOWN_HOSTS)  # what is there must be ours to replace
            if fd is not None:
                os.close(fd)
            write_at(dfd, KNOWN_HOSTS, data, 0o600)

    def forget_known_hosts(self) -> bool:
        """Remove the pin (a link there goes, its target stays); True when there was one."""
        try:
            with _folder_fd(self.folder, create=False) as dfd:
                if dfd is None:
                    return False
                try:
                    os.unlink(KNOWN_HOSTS, dir_fd=dfd)
                except FileNotFoundError:
                    return False
                return True
        except StateError:
            return False

    def pin(self, host: str, port: int) -> None:
        """Write the known_hosts entry for where the machine's SSH is reachable."""
        key_type, key = self.host_pub.split()[:2]
        entry = f"[{host}]:{port}" if port != 22 else host
        self.write_known_hosts(f"{entry} {key_type} {key}\n")


def _keygen(path: Path, comment: str) -> None:
    if shutil.which("ssh-keygen") is None:
        raise BackendUnavailable("ssh-keygen is not installed", hint="apt-get install openssh-client")
    r = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        raise CommandFailed(f"ssh-keygen failed: {r.stderr.strip()}")


def _make_pair(dfd: int, folder: Path, name: str, comment: str) -> None:
    """A new key pair `name`/`name.pub` in the folder `dfd`: ssh-keygen writes it in a private temp
    folder of its own, and the files are moved in by write_at (a link at either name is replaced,
    never followed). The public half goes first: a pair cut short is made again next time."""
    import tempfile

    from devenv.state import read_bounded, write_at

    tmp = Path(tempfile.mkdtemp(prefix="devenv-keygen-"))  # 0700, a new name: nobody else's
    try:
        _keygen(tmp / "key", comment)
        private = read_bounded(tmp / "key", limit=MAX_KEY_BYTES)
        public = read_bounded(tmp / "key.pub", limit=MAX_KEY_BYTES)
        if private is None or public is None:
            raise CommandFailed("ssh-keygen made no key")
        write_at(dfd, name + ".pub", public, 0o644)
        write_at(dfd, name, private, 0o600)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_keys(folder: Path, comment: str, *, fresh: bool = False) -> MachineKeys:
    """The machine's keys, generated once (0600, in a 0700 folder); StateError for anything in the
    folder that devenv did not make (see the module docstring).

    fresh=True (a machine being created): any keys already there are replaced by new ones. A
    checkout may carry a .devenv/ whose keys its author knows; a new machine must never trust
    them, so only a machine that already exists keeps the keys it was made with."""
    keys = MachineKeys(folder)
    with _folder_fd(folder, create=True) as dfd:
        assert dfd is not None
        os.fchmod(dfd, 0o700)  # through the descriptor: never a path that could be a link
        if fresh:
            for name in KEY_FILES:
                fd = _open_entry(dfd, folder, name)  # refuses what devenv cannot have made
                if fd is not None:
                    os.close(fd)
                    os.unlink(name, dir_fd=dfd)  # unlink never follows a link
        present = set()
        for name in KEY_FILES:
            fd = _open_entry(dfd, folder, name)
            if fd is not None:
                os.fchmod(fd, 0o644 if name.endswith(".pub") else 0o600)
                os.close(fd)
                present.add(name)
        for name, who in ((CLIENT_KEY, "client"), (HOST_KEY, "host")):
            if name not in present or name + ".pub" not in present:
                _make_pair(dfd, folder, name, f"devenv {who} {comment}")
    return keys
