"""The devenv command line (typer). The only place a DevenvError becomes an exit code.

Exit codes: 0 ok; 1 unexpected internal error; 2 bad usage or invalid Devfile; 3 engine
unavailable; 4 machine not in a state the verb needs; 5 a provision step failed; 6 a command
devenv ran failed; 7 box error; 8 unreadable state; 9 project lock timeout; 10 unsupported by
the driver; 11 host port in use; 130 interrupted. `ssh -c` and `exec` exit with the command's code.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from devenv import __version__
from devenv.cli import machines, project_cmds, ui
from devenv.cli.common import options

app = typer.Typer(
    name="devenv",
    help="Local development environments from a Devfile: containers and VMs, one tool.",
    no_args_is_help=True,
    add_completion=False,
    suggest_commands=False,  # click suggests already; typer's would repeat it
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# `devenv box ...` lives in devenv/cli/box.py (its box code loads only when a box command runs).
from devenv.cli.box import box_app  # noqa: E402

app.add_typer(box_app, name="box")
from devenv.cli.snapshot import snapshot_app  # noqa: E402

app.add_typer(snapshot_app, name="snapshot")
from devenv.cli.cache import cache_app  # noqa: E402

app.add_typer(cache_app, name="cache")


def _version(value: bool) -> None:
    if value:
        print(f"devenv {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    file: Annotated[
        Optional[Path], typer.Option("-f", "--file", help="Devfile to use (default: search upwards)")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and engine details")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only print results and errors")] = False,
    progress: Annotated[
        str,
        typer.Option(
            "--progress",
            help="How progress is shown on stderr: text (==> lines) or json (one JSON event per line)",
            metavar="text|json",
        ),
    ] = "text",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version")
    ] = False,
) -> None:
    options["file"] = file
    if progress not in ("text", "json"):
        ui.error(f"--progress {progress!r}: not one of text, json", "devenv --progress json up")
        raise typer.Exit(2)
    ui.configure(quiet=quiet, debug=debug or bool(os.environ.get("DEVENV_DEBUG")), json_lines=progress == "json")


# The commands, in the order `devenv --help` lists them. Each lives in the module of its group.
_COMMANDS: list[tuple[Callable[..., Any], str | None, dict[str, Any]]] = [
    (project_cmds.init, None, {}),
    (project_cmds.validate, None, {}),
    (project_cmds.schema, None, {}),
    (machines.up, None, {}),
    (machines.halt, None, {}),
    (machines.reload, None, {}),
    (machines.provision, None, {}),
    (machines.destroy, None, {}),
    (machines.suspend, None, {}),
    (machines.resume, None, {}),
    (machines.status, None, {}),
    (machines.port, None, {}),
    (machines.global_status, "global-status", {}),
    (machines.ssh, None, {}),
    (machines.exec_, "exec", {"context_settings": {"allow_interspersed_args": False}}),
    (machines.package, None, {}),
    (project_cmds.doctor, None, {}),
    (machines.ssh_config, "ssh-config", {}),
    (machines.rsync, None, {}),
]
for _fn, _name, _settings in _COMMANDS:
    app.command(_name, **_settings)(_fn)

from devenv.cli import vagrant_import as _vagrant_import  # noqa: E402

_vagrant_import.register(app)


_GLOBAL_WITH_VALUE = {"-f", "--file", "--progress"}


def _command_word(argv: list[str]) -> str | None:
    """The subcommand argv names, skipping the global options before it (None: help/version/none)."""
    it = iter(argv)
    for arg in it:
        if arg in _GLOBAL_WITH_VALUE:
            next(it, None)
        elif arg in ("-h", "--help", "--version") or arg == "--":
            return None
        elif not arg.startswith("-"):
            return arg
    return None


def app_for(argv: list[str]) -> typer.Typer:
    """The app with only the command argv runs.

    Typer turns every registered function into a click command (signature inspection, type
    hints) before it parses argv: ~15 ms for our ~30 commands on every call. Only the one that
    runs needs it; help, unknown commands and typos get the full app so nothing reads differently.
    """
    word = _command_word(argv)
    if word is None:
        return app
    commands = [
        c
        for c in app.registered_commands
        if (c.name or (c.callback.__name__.lower().replace("_", "-") if c.callback else "")) == word
    ]
    groups = [g for g in app.registered_groups if g.name == word]
    if len(commands) + len(groups) != 1:
        return app
    slim = copy.copy(app)
    slim.registered_commands = commands
    slim.registered_groups = groups
    return slim


def main() -> None:
    app_for(sys.argv[1:])(prog_name="devenv")
