"""Commands about the Devfile and this host: init, validate, schema, doctor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from devenv.cli import ui
from devenv.cli.common import handle_errors, host_notice, open_project, options
from devenv.errors import DevfileError

_TEMPLATE = """\
# Devfile: the machines of this project. Docs: `devenv schema` prints the full JSON Schema.

[project]
name = "{name}"

[defaults]
driver = "docker"
box = "{box}"

[machines.dev]
# cpus = 2
# memory = "1GiB"
sync = [{{ host = ".", guest = "/src" }}]
# ports = [{{ guest = 8000, host = 8000 }}]     # binds 127.0.0.1 unless host_ip says otherwise
provision = [
  {{ type = "shell", inline = "echo provisioned > /etc/devenv-provisioned" }},
]
"""


@handle_errors
def init(
    box: Annotated[str, typer.Option(help="Box for the first machine")] = "debian-12",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing Devfile")] = False,
) -> None:
    """Write a starter Devfile in the current folder."""
    from devenv.model.devfile import default_project_name
    from devenv.paths import write_new_file

    path = Path(options["file"] or "Devfile")
    # Created with O_EXCL|O_NOFOLLOW: a planted (even dangling) link named Devfile is refused.
    write_new_file(
        path,
        _TEMPLATE.format(name=default_project_name(Path.cwd()), box=box),
        force=force,
        hint="edit it, or pass --force to overwrite it",
    )
    ui.info(None, f"wrote {path}; next: `devenv up`")


@handle_errors
def validate(json_out: Annotated[bool, typer.Option("--json", help="Problems as JSON")] = False) -> int:
    """Check the Devfile and report every problem at once."""
    from devenv.model import devfile

    path = options["file"].absolute() if options["file"] else devfile.find_devfile()
    df, problems = devfile.check_file(path)
    if json_out:
        print(json.dumps({"valid": not problems, "problems": [p.as_dict() for p in problems]}, indent=2))
        return 2 if problems else 0
    if problems:
        for p in problems:
            ui.problem(str(p))
        ui.error(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {devfile.display_path(path)}")
        return 2
    assert df is not None
    host_notice(df)
    ui.say(f"{devfile.display_path(path)} is valid: {len(df.machines)} machine(s): {', '.join(df.machines)}")
    return 0


@handle_errors
def schema() -> None:
    """Print the JSON Schema of the Devfile (for editors)."""
    from devenv.model.devfile import json_schema

    print(json.dumps(json_schema(), indent=2))


@handle_errors
def doctor(json_out: Annotated[bool, typer.Option("--json")] = False) -> int:
    """Check what this machine has for the Devfile (engines, tools, disk, ports), with a fix for each miss."""
    from devenv.core.doctor import run_checks

    try:
        project = open_project()
    except DevfileError as exc:
        if exc.problems:
            raise
        project = None  # no Devfile here: check the machine only
    checks = run_checks(project)
    failed = [c for c in checks if c.status == "missing" and c.needed]
    if json_out:
        print(json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}, indent=2))
        return 1 if failed else 0
    marks = {"ok": ui.style("ok  ", "green"), "warn": ui.style("warn", "yellow"), "missing": ui.style("miss", "red")}
    width = max(len(c.name) for c in checks)
    for c in checks:
        need = " (the Devfile needs it)" if c.needed and c.status == "missing" else ""
        ui.say(f"{marks[c.status]}  {c.name:<{width}}  {c.detail}{need}")
        if c.fix and c.status != "ok":
            ui.say(f"      {'':<{width}}  fix: {c.fix}")
    return 1 if failed else 0
