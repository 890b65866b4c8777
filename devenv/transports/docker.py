"""The Docker transport: docker exec and the archive API, output streamed line by line."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from devenv.contract import Connection, LineSplitter
from devenv.errors import BackendUnavailable, CommandFailed, MachineStateError, UsageError
from devenv.transports.env import LOGIN_SHELL, check_env
from devenv.transports.files import extract_from_machine, tar_for_put

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

    `engine` is a devenv.transports.dockerapi engine (UnixEngine or SdkEngine)."""

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
        from devenv.transports.dockerapi import EngineError, exec_config

        # stderr is kept apart when asked, so `devenv ssh -c` output can be piped while errors
        # still show; else it goes to on_output too. Each stream has its own splitter either way,
        # so a half line of one is never glued to a line of the other. The frames come in the order
        # the engine wrote them (dockerapi keeps it), but the engine reads the command's two pipes
        # apart: the order *between* stdout and stderr is only the order it read them in. A caller
        # that needs the real interleaving merges them in the command (shell steps run with
        # `exec 2>&1`); wrapping every argv in a shell here would fail in an image without one.
        splitter = LineSplitter(on_output or (lambda _line: None))
        err_splitter = LineSplitter(on_stderr or on_output or (lambda _line: None))
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
        splitter.close()
        err_splitter.close()
        return 127 if code is None else int(code)

    def put(self, local: Path, remote: str) -> None:
        self.put_tree(local, remote)  # one archive either way: the engine has no incremental copy

    def put_tree(self, local: Path, remote: str, *, exclude: tuple[str, ...] = ()) -> None:
        from devenv.transports.dockerapi import EngineError

        data, at = tar_for_put(local, remote, exclude)
        try:
            self._call(self.engine.put_archive, self.container_id, at, data)
        except EngineError as exc:
            raise CommandFailed(f"cannot copy {local} to {self.machine}:{remote}: {exc.message}") from exc

    def connection(self) -> Connection:
        from devenv.transports.dockerapi import context_host

        # The engine the container lives on: DOCKER_HOST, else a non-default docker context.
        return Connection(kind="docker", container=self.container_id, docker_host=self.docker_host or context_host())

    def ssh_config(self, alias: str) -> str | None:
        return None  # reached through the engine, not over SSH

    def get(self, remote: str, local: Path) -> None:
        from devenv.transports.dockerapi import EngineError

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
