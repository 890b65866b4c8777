"""The SSH transport: OpenSSH with the machine's pinned host key, one shared connection."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path, PurePosixPath

from devenv.contract import Connection, LineSplitter
from devenv.errors import CommandFailed, UsageError
from devenv.transports.env import LOGIN_SHELL, check_env, env_script
from devenv.transports.files import extract_from_machine, tar_for_put

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
        from devenv.masking import escape

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
    from devenv.masking import escape

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

    def pinning_options(self) -> list[str]:
        """Who the machine is and how devenv proves it is talking to it: the pinned host key
        (StrictHostKeyChecking=yes against devenv's known_hosts, never off), this machine's own
        key only, no passwords, no prompts. Tools devenv hands the machine to (Ansible) get these."""
        return [
            "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={ssh_path(self.known_hosts, what='known_hosts file')}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes",
            "-o", f"IdentityFile={ssh_path(self.key, what='SSH key')}",
            "-o", "PasswordAuthentication=no",
            "-o", "BatchMode=yes",
        ]  # fmt: skip

    def options(self) -> list[str]:
        """Every option devenv's own ssh runs with: the pinning above, timeouts, the shared connection."""
        return [
            *self.pinning_options(),
            "-o", "KbdInteractiveAuthentication=no",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", "ServerAliveInterval=15",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self.control_path()}",
            "-o", "ControlPersist=120",
            "-o", "LogLevel=ERROR",
            "-p", str(self.port),
            "-l", self.user,
        ]  # fmt: skip

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
        script = env_script(list(argv), env, workdir)
        if on_stderr is None:
            # One stream asked for: the command's stderr joins its stdout in the machine. sshd
            # sends the two pipes as the channel's data and extended data, read apart, and the
            # selector below sees them as two pipes again: their order between each other would
            # be what each read happened to get (stderr lines ahead of or behind stdout), never
            # the order written. ssh's own messages (host key, unreachable) stay on stderr.
            script = "exec 2>&1\n" + script
        script_bytes = script.encode()
        proc = subprocess.Popen(
            self._ssh(self._as_user("-s", user)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None

        def feed() -> None:
            try:
                proc.stdin.write(script_bytes)  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass  # ssh ended early (unreachable): its exit code and stderr say why

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        out = LineSplitter(on_output or (lambda _line: None))
        err_lines: list[str] = []

        def err_sink(line: str) -> None:
            err_lines.append(line)
            (on_stderr or on_output or (lambda _line: None))(line)

        err = LineSplitter(err_sink)
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
                from devenv.masking import tail

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

    def connection(self) -> Connection:
        return Connection(
            kind="ssh",
            host=self.host,
            port=self.port,
            user=self.user,
            key=self.key,
            known_hosts=self.known_hosts,
            ssh_options=tuple(self.pinning_options()),
            control_path=self.control_path(),
        )

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
