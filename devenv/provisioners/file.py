"""file: copy a file or a folder from the project into the machine."""

from __future__ import annotations

from pathlib import Path

from devenv.errors import CommandFailed, ProvisionError
from devenv.model.schema import Bool, Field, Problem, Str, Table
from devenv.provisioners import RunContext, host_path_problems, step_fields


def _check(config: dict, path: tuple, problems: list) -> None:
    dest = config.get("destination")
    if dest and not dest.startswith("/"):
        problems.append(Problem(path + ("destination",), f"must be an absolute path in the machine, got '{dest}'"))


class FileProvisioner:
    type = "file"
    options = Table(
        {
            **step_fields("file"),
            "source": Field(Str(description="File or folder in the project"), required=True),
            "destination": Field(Str(description="Absolute path in the machine"), required=True),
            "allow_outside_project": Field(Bool(description="Allow a source outside the project")),
        },
        description="Copy a file or folder into the machine",
        check_fn=_check,
    )

    def files(self, config: dict, root: Path) -> list[Path]:
        return [root / config["source"]]

    def check(self, config: dict, root: Path, path: tuple) -> list[Problem]:
        return host_path_problems(config, "source", root, path, want_file=False)

    def describe(self, config: dict) -> str:
        return f"file {config['source']} -> {config['destination']}"

    def run(self, config: dict, ctx: RunContext) -> None:
        from devenv.provisioners.shell import _at_use

        # The real path, checked now: a folder is copied with the links in it kept as links
        # (never followed), so only the source itself must stay in the project.
        local = _at_use(config, "source", ctx, want_file=False, step="file")
        try:
            ctx.transport.put(local, config["destination"])
        except CommandFailed as exc:  # a failed copy is a failed step: exit 5, resumable
            raise ProvisionError(f"file step: {exc.message}", hint=exc.hint) from exc
        ctx.on_output(f"copied {config['source']} to {config['destination']}")
