"""A machine's environment: checked names, and a script that carries it on stdin (never argv)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from devenv.contract import Connection, Transport
from devenv.errors import UsageError

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

    def put_tree(self, local: Path, remote: str, *, exclude: tuple[str, ...] = ()) -> None:
        self.inner.put_tree(local, remote, exclude=exclude)

    def get(self, remote: str, local: Path) -> None:
        self.inner.get(remote, local)

    def interactive(self, argv, *, env=None, user=None, workdir=None) -> int:
        return self.inner.interactive(argv, env={**self.env, **(env or {})}, user=user, workdir=workdir)

    def connection(self) -> Connection:
        return self.inner.connection()._replace(env=dict(self.env))

    def ssh_config(self, alias: str) -> str | None:
        return self.inner.ssh_config(alias)
