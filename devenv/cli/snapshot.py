"""`devenv snapshot save|restore|delete|list`: VM snapshots (libvirt)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from devenv.cli import ui
from devenv.cli.common import handle_errors, open_project

snapshot_app = typer.Typer(
    help="Save and restore VM snapshots (libvirt).", no_args_is_help=True, suggest_commands=False
)


MachineArg = Annotated[str, typer.Argument(help="Machine")]


SnapArg = Annotated[str, typer.Argument(help="Snapshot name")]


@snapshot_app.command("save")
@handle_errors
def snapshot_save(name: MachineArg, snap: SnapArg) -> None:
    """Take a snapshot of a machine (running or stopped)."""
    open_project().snapshot("save", name, snap)


@snapshot_app.command("restore")
@handle_errors
def snapshot_restore(name: MachineArg, snap: SnapArg) -> None:
    """Return a machine to a snapshot."""
    open_project().snapshot("restore", name, snap)


@snapshot_app.command("delete")
@handle_errors
def snapshot_delete(name: MachineArg, snap: SnapArg) -> None:
    """Delete a snapshot."""
    open_project().snapshot("delete", name, snap)


@snapshot_app.command("list")
@handle_errors
def snapshot_list(name: MachineArg, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List a machine's snapshots."""
    snaps = open_project().snapshot("list", name)
    if json_out:
        print(json.dumps(snaps))
        return
    for sn in snaps:
        ui.say(sn)
    if not snaps:
        ui.say("(no snapshots)")
