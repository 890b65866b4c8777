"""shell: run an inline command or a script from the project inside the machine."""

from __future__ import annotations

import shlex
from collections import deque
from pathlib import Path

from devenv.errors import CommandFailed, ProvisionError
from devenv.model.schema import Bool, Field, ListOf, MapOf, Problem, Str, Table
from devenv.provisioners import RunContext, host_path, host_path_problems, step_fields

_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
TAIL_LINES = 20

# A step's stderr joins its stdout inside the machine, before anything reads either. As two pipes,
# whoever reads them (dockerd's exec attach copies each in its own goroutine, sshd its channel's
# data and extended data) hands them on in the order it happened to read them, not the order the
# step wrote them: `echo one; echo two >&2; echo three` came out "one three two". No reader on the
# host can undo that, so the streams are one pipe from the start and the output (and the tail a
# failure shows) is the interleaving a terminal shows. Nothing is lost: a step's stderr lines were
# never told apart (they went to the same on_output; the reporter has no stderr mark).
# Prepended on the script's first line, so the line numbers sh reports in errors stay the user's.
_MERGE_STDERR = "exec 2>&1; "


def _check(config: dict, path: tuple, problems: list) -> None:
    if ("inline" in config) == ("script" in config):
        problems.append(Problem(path, "a shell step needs exactly one of 'inline' or 'script'"))


class ShellProvisioner:
    type = "shell"
    options = Table(
        {
            **step_fields("shell"),
            "inline": Field(Str(description="Shell commands run with /bin/sh -c")),
            "script": Field(Str(description="A script in the project, copied in and run")),
            "args": Field(ListOf(Str(nonempty=False), description="Arguments for the script")),
            "env": Field(MapOf(Str(nonempty=False), key_pattern=_ENV_NAME, key_help="letters, digits, _")),
            "user": Field(Str(description="Run as this user (default root)"), default="root"),
            "workdir": Field(Str(description="Working directory in the machine")),
            "allow_outside_project": Field(Bool(description="Allow a script outside the project")),
        },
        description="Run a shell script or inline commands in the machine",
        check_fn=_check,
    )

    def files(self, config: dict, root: Path) -> list[Path]:
        return [root / config["script"]] if "script" in config else []

    def check(self, config: dict, root: Path, path: tuple) -> list[Problem]:
        if "script" in config:
            return host_path_problems(config, "script", root, path, want_file=True)
        return []

    def describe(self, config: dict) -> str:
        if "script" in config:
            return f"shell {config['script']}"
        first = config.get("inline", "").strip().splitlines()[0] if config.get("inline", "").strip() else ""
        return f"shell: {first[:60]}"

    def run(self, config: dict, ctx: RunContext) -> None:
        args = [str(a) for a in config.get("args", [])]
        tail: deque[str] = deque(maxlen=TAIL_LINES)

        def out(line: str) -> None:
            tail.append(line)
            ctx.on_output(line)

        remote = None
        if "script" in config:
            local = _at_use(config, "script", ctx, want_file=True, step="shell")
            remote = f"/tmp/devenv-provision/{Path(config['script']).name}"
            try:
                ctx.transport.put(local, remote)
            except CommandFailed as exc:  # a failed copy is a failed step: exit 5, resumable
                raise ProvisionError(f"shell step: {exc.message}", hint=exc.hint) from exc
            if _starts_with_shebang(local):
                run = f'chmod 0755 {shlex.quote(remote)} && exec {shlex.quote(remote)} "$@"'
            else:
                run = f'exec /bin/sh {shlex.quote(remote)} "$@"'
            argv = ["/bin/sh", "-c", _MERGE_STDERR + run, "devenv-shell", *args]
            shown = " ".join([config["script"], *args])
        else:
            argv = ["/bin/sh", "-c", _MERGE_STDERR + config["inline"], "devenv-shell", *args]
            # The error names the step by its first line: the script itself is in the Devfile, and
            # the output tail below says what went wrong.
            lines = config["inline"].strip().splitlines() or [""]
            shown = lines[0][:80] + (" ..." if len(lines) > 1 or len(lines[0]) > 80 else "")
        code = ctx.transport.run(
            argv,
            env=config.get("env"),
            user=config.get("user", "root"),
            workdir=config.get("workdir"),
            on_output=out,
        )
        if remote:
            ctx.transport.run(["/bin/sh", "-c", f"rm -f {shlex.quote(remote)}"], user="root")
        if code != 0:
            raise ProvisionError(
                f"shell step failed with exit code {code}: {shown}"
                + ("\n--- last output ---\n" + "\n".join(tail) if tail else ""),
                hint=f"the machine is left running: inspect it with `devenv ssh {ctx.machine}`, fix the step, "
                f"then `devenv provision {ctx.machine}` resumes at this step",
            )


def _at_use(config: dict, key: str, ctx: RunContext, *, want_file: bool, step: str) -> Path:
    """The step's host file, confined again now: a link may have been swapped since validation."""
    from devenv.paths import ConfinementError

    try:
        return host_path(config, key, ctx.root, want_file=want_file)
    except ConfinementError as exc:
        raise ProvisionError(
            f"{step} step: {key} {exc.message}",
            hint="the path changed since the Devfile was checked; fix it, then `devenv provision` resumes here",
        ) from exc


def _starts_with_shebang(local: Path) -> bool:
    """Whether the script (a real path) starts with "#!", read without following a link.

    The machine may have swapped the script for a link to a host file since it was copied: the
    file is opened with O_NOFOLLOW on every component and must be a regular file.
    """
    import os
    import stat

    from devenv.paths import open_nofollow

    try:
        fd = open_nofollow(local)
    except OSError as exc:
        raise ProvisionError(
            f"shell step: cannot read {local}: {exc.strerror or exc} (a symbolic link put in its place?)",
            hint="the path changed since the Devfile was checked; fix it, then `devenv provision` resumes here",
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProvisionError(f"shell step: {local} is no longer a regular file")
        return os.read(fd, 2) == b"#!"
    finally:
        os.close(fd)
