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


def tar_for_put(local: Path, remote: str) -> tuple[bytes, str]:
    """A tar to extract at '/', putting ``local`` at ``remote`` (parents created by the engine)."""
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
                dirnames.sort()
                for n in sorted(dirnames) + sorted(filenames):
                    p = Path(dirpath) / n
                    add(p, f"{base}/{p.relative_to(local).as_posix()}")
        else:
            add(local, base)
    return buf.getvalue(), "/"


class DockerTransport:
    """docker exec + the archive API, streaming output line by line."""

    def __init__(self, client: Any, container_id: str, machine: str, docker_host: str | None = None) -> None:
        self.client = client
        self.container_id = container_id
        self.machine = machine
        self.docker_host = docker_host

    def _errors(self):
        import docker.errors

        return docker.errors

    def run(self, argv, *, env=None, user=None, workdir=None, on_output=None, on_stderr=None) -> int:
        api = self.client.api
        errors = self._errors()
        try:
            ex = api.exec_create(
                self.container_id,
                list(argv),
                stdout=True,
                stderr=True,
                tty=False,
                environment=dict(env) if env else None,
                user=user or "",
                workdir=workdir,
            )
            splitter = _LineSplitter(on_output or (lambda _line: None))
            if on_stderr is None:
                for chunk in api.exec_start(ex["Id"], stream=True):
                    splitter.feed(chunk)
            else:
                # Kept apart so `devenv ssh -c` output can be piped while errors still show.
                err_splitter = _LineSplitter(on_stderr)
                for out, err in api.exec_start(ex["Id"], stream=True, demux=True):
                    if out:
                        splitter.feed(out)
                    if err:
                        err_splitter.feed(err)
                err_splitter.close()
            splitter.close()
            code = api.exec_inspect(ex["Id"])["ExitCode"]
        except errors.NotFound as exc:
            raise MachineStateError(
                f"machine '{self.machine}' is gone: {exc.explanation}", hint=f"run `devenv up {self.machine}`"
            ) from exc
        except errors.APIError as exc:
            text = exc.explanation or str(exc)
            if "is not running" in text:
                raise MachineStateError(
                    f"machine '{self.machine}' is not running", hint=f"run `devenv up {self.machine}`"
                ) from exc
            if "executable file not found" in text or "no such file or directory" in text:
                return 127
            raise CommandFailed(f"cannot run {shlex.join(argv)} in '{self.machine}': {text}") from exc
        return 127 if code is None else int(code)

    def put(self, local: Path, remote: str) -> None:
        data, at = tar_for_put(local, remote)
        errors = self._errors()
        try:
            self.client.api.put_archive(self.container_id, at, data)
        except errors.APIError as exc:
            raise CommandFailed(f"cannot copy {local} to {self.machine}:{remote}: {exc.explanation or exc}") from exc

    def get(self, remote: str, local: Path) -> None:
        errors = self._errors()
        try:
            stream, _stat = self.client.api.get_archive(self.container_id, remote)
        except errors.NotFound as exc:
            raise CommandFailed(f"not found in '{self.machine}': {remote}") from exc
        buf = io.BytesIO(b"".join(stream))
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
