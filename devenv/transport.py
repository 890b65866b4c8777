"""Run commands and copy files inside a running machine.

A Transport is what provisioners and `ssh`/`exec` see; drivers hand one out. The Docker
transport uses the engine API (exec + archive), so it works against remote engines too.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from devenv.errors import BackendUnavailable, CommandFailed, MachineStateError

OutputFn = Callable[[str], None]

# Interactive login shell that prefers bash but works on busybox and distroless-with-sh images.
LOGIN_SHELL = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"


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


def tar_for_put(local: Path, remote: str, exclude: tuple[str, ...] = ()) -> tuple[bytes, str]:
    """A tar to extract at '/', putting ``local`` at ``remote`` (parents created by the engine).

    ``exclude``: fnmatch patterns matched against paths relative to ``local`` (and their names).
    """
    import fnmatch

    def excluded(rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(name, pat) for pat in exclude)

    dest = PurePosixPath(remote)
    if not dest.is_absolute():
        raise CommandFailed(f"destination must be an absolute path in the machine: {remote}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:

        def add(path: Path, arcname: str) -> None:
            info = tar.gettarinfo(str(path), arcname=arcname)
            # Files land owned by root, as with `cp` by root: host uids mean nothing in the machine.
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)

        base = str(dest).lstrip("/")
        if local.is_dir():
            add(local, base)
            for dirpath, dirnames, filenames in os.walk(local):
                dirnames[:] = sorted(
                    d for d in dirnames if not excluded((Path(dirpath) / d).relative_to(local).as_posix())
                )
                for n in dirnames + sorted(filenames):
                    p = Path(dirpath) / n
                    rel = p.relative_to(local).as_posix()
                    if not excluded(rel):
                        add(p, f"{base}/{rel}")
        else:
            add(local, base)
    return buf.getvalue(), "/"


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
                exec_config(list(argv), env, user, workdir),
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
        buf = io.BytesIO(data)
        with tarfile.open(fileobj=buf) as tar:
            members = tar.getmembers()
            if len(members) == 1 and members[0].isfile():
                f = tar.extractfile(members[0])
                assert f is not None
                local.write_bytes(f.read())
            else:
                local.mkdir(parents=True, exist_ok=True)
                # The archive's top folder is the remote folder itself: strip it.
                for m in members:
                    parts = PurePosixPath(m.name).parts[1:]
                    if not parts:
                        continue
                    m.name = str(PurePosixPath(*parts))
                    tar.extract(m, local, filter="data")

    def interactive(self, argv, *, env=None, user=None, workdir=None) -> int:
        docker_cli = shutil.which("docker")
        if docker_cli is None:
            raise BackendUnavailable(
                "an interactive shell needs the docker command-line client, which is not on PATH",
                hint="install it (Debian: apt-get install docker.io) or use `devenv ssh NAME -c CMD`",
            )
        cmd = [docker_cli, "exec", "-i"]
        if os.isatty(0):
            cmd.append("-t")
        for k, v in (env or {}).items():
            cmd += ["-e", f"{k}={v}"]
        if user:
            cmd += ["-u", user]
        if workdir:
            cmd += ["-w", workdir]
        cmd.append(self.container_id)
        cmd += list(argv) if argv else ["/bin/sh", "-c", LOGIN_SHELL]
        environ = dict(os.environ)
        if self.docker_host:
            environ["DOCKER_HOST"] = self.docker_host
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
        self.host = host
        self.port = port
        self.user = user
        self.key = key
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout

    def _control_dir(self) -> Path:
        # Unix socket paths are limited to ~104 bytes: keep them short and private.
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"devenv-ssh-{os.getuid()}"
        base.mkdir(mode=0o700, exist_ok=True)
        return base

    def options(self) -> list[str]:
        return [
            "-F",
            "/dev/null",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"IdentityFile={self.key}",
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
            f"ControlPath={self._control_dir()}/%C",
            "-o",
            "ControlPersist=120",
            "-o",
            "LogLevel=ERROR",
            "-p",
            str(self.port),
            "-l",
            self.user,
        ]

    def _remote(self, argv: list[str], env: Mapping[str, str] | None, user: str | None, workdir: str | None) -> str:
        cmd = shlex.join(argv)
        if env:
            cmd = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " " + cmd
        if workdir:
            cmd = f"cd {shlex.quote(workdir)} && {cmd}"
        if user and user != self.user:
            if self.user == "root":
                cmd = f"su -s /bin/sh {shlex.quote(user)} -c {shlex.quote(cmd)}"
            else:
                cmd = f"sudo -n -u {shlex.quote(user)} -- /bin/sh -c {shlex.quote(cmd)}"
        elif self.user != "root" and user == "root":
            cmd = f"sudo -n -- /bin/sh -c {shlex.quote(cmd)}"
        return cmd

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

        proc = subprocess.Popen(
            self._ssh(self._remote(list(argv), env, user, workdir)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
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
                raise CommandFailed(f"rsync to {self.machine}:{remote} failed: {r.stderr.strip()[-500:]}")
            return
        data, at = tar_for_put(local, remote, exclude)
        prefix = "" if self.user == "root" else "sudo -n "
        self._pipe(f"{prefix}tar -x -C {shlex.quote(at)} -f -", data)

    def get(self, remote: str, local: Path) -> None:
        parent, name = str(PurePosixPath(remote).parent), PurePosixPath(remote).name
        data = self._pipe(f"tar -c -C {shlex.quote(parent)} -f - {shlex.quote(name)}")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            if len(members) == 1 and members[0].isfile():
                f = tar.extractfile(members[0])
                assert f is not None
                local.write_bytes(f.read())
                return
            local.mkdir(parents=True, exist_ok=True)
            for m in members:
                parts = PurePosixPath(m.name).parts[1:]
                if parts:
                    m.name = str(PurePosixPath(*parts))
                    tar.extract(m, local, filter="data")

    def interactive(self, argv, *, env=None, user=None, workdir=None) -> int:
        remote = self._remote(list(argv), env, user, workdir) if argv else None
        if remote is None and (env or workdir or (user and user != self.user)):
            remote = self._remote(["/bin/sh", "-c", LOGIN_SHELL], env, user, workdir)
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

    def ssh_config(self, alias: str) -> str:
        """A Host block for `ssh -F` and VS Code Remote-SSH, with the same pinning."""
        return "\n".join(
            [
                f"Host {alias}",
                f"  HostName {self.host}",
                f"  Port {self.port}",
                f"  User {self.user}",
                f"  IdentityFile {self.key}",
                "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {self.known_hosts}",
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
