"""`devenv box ...`: build, add, list, update, prune and remove boxes.

Thin commands: they parse options, call the box subsystem (devenv.boxes.builders, .inventory,
.store, .vagrantbox) with the CLI's reporter (devenv.cli.render) and render what comes back.
The box code is imported only when a box command runs: `devenv status` never loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from devenv.cli.common import NamesArg, handle_errors, open_project, options

box_app = typer.Typer(
    help="Build, list and remove boxes (machine images).", no_args_is_help=True, suggest_commands=False
)


def _reporter():
    from devenv.cli.render import reporter

    return reporter()


def _project_root() -> Path | None:
    from devenv.errors import DevenvError
    from devenv.model import devfile

    try:
        path = options["file"].resolve() if options["file"] else devfile.find_devfile()
        return path.parent
    except DevenvError:
        # No Devfile (yet): recipes in ./boxes still count, as when building boxes in a repo of boxes.
        return Path.cwd()


@box_app.command("build")
@handle_errors
def box_build(
    name: Annotated[str, typer.Argument(help="Box recipe name (boxes/NAME.toml)")],
    output: Annotated[
        Optional[list[str]], typer.Option("--output", help="Only these outputs (docker, libvirt)")
    ] = None,
    pull: Annotated[bool, typer.Option("--pull", help="Allow pulling a base image from a registry")] = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when the box exists")] = False,
) -> None:
    """Build a box's outputs from its recipe, tagged with its version."""
    from devenv.boxes.builders import build_box

    # Each output's result is reported as it is made (a "build" event): nothing more to show here.
    build_box(name, _project_root(), outputs=output, pull=pull, force=force, reporter=_reporter())


@box_app.command("publish")
@handle_errors
def box_publish(
    box: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (default: the recipe's version)")],
    to: Annotated[str, typer.Option("--to", help="oci://HOST[:PORT]/REPO: an OCI registry repository")],
    output: Annotated[
        Optional[list[str]], typer.Option("--output", help="Only these outputs (docker, libvirt)")
    ] = None,
) -> None:
    """Push a built box's outputs to an OCI registry: the Docker image as REPO:VERSION, the VM disk
    as the artifact REPO:VERSION-libvirt. Credentials are Docker's (`docker login HOST`)."""
    from devenv.boxes.builders import registry
    from devenv.errors import BoxError
    from devenv.model.recipe import find_recipe, parse_ref

    ref = parse_ref(box)
    try:
        recipe = find_recipe(ref, _project_root())
    except BoxError:
        recipe = None  # a box added or packaged here: its stored versions decide
    # Each output is reported as it is pushed (a "publish" event); the digests are in them.
    registry.publish(ref.name, ref.version, to, outputs=output, recipe=recipe, reporter=_reporter())


@box_app.command("add")
@handle_errors
def box_add(
    source: Annotated[str, typer.Argument(help="A .box file (path or URL) or a Vagrant box catalog (JSON)")],
    name: Annotated[Optional[str], typer.Option("--name", help="Box name (default: from the file name)")] = None,
    version: Annotated[Optional[str], typer.Option("--version", help="Box version (catalog: default newest)")] = None,
    checksum: Annotated[
        Optional[str], typer.Option("--checksum", help="sha256:HEX or sha512:HEX the file must have")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Add a downloaded box without a checksum (recorded in its source)")
    ] = False,
) -> None:
    """Add a box to the box store, verifying its checksum (a mismatch is refused)."""
    from devenv.boxes import vagrantbox
    from devenv.cli import ui

    stored = vagrantbox.add(
        source, name=name, version=version, checksum=checksum, insecure=insecure, reporter=_reporter()
    )
    if stored.meta.get("source", {}).get("insecure"):
        ui.warn(f"{stored.name}@{stored.version} was added without a checksum: nothing proves it is the published box")
    ui.info(None, f"added {stored.name}@{stored.version} ({stored.provider}) from {source}")


@box_app.command("prune")
@handle_errors
def box_prune(dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go")] = False) -> None:
    """Remove old box versions: keeps the newest of each box and every version a lock file or machine uses."""
    from devenv.boxes import inventory
    from devenv.cli import ui

    if not inventory.prune(_project_root(), dry_run=dry_run, reporter=_reporter()):
        ui.info(None, "nothing to prune")


@box_app.command("update")
@handle_errors
def box_update(names: NamesArg = None) -> None:
    """Move Devfile.lock to the newest box version available for each machine."""
    from devenv.cli import ui

    changes = open_project().box_update(names)
    for machine, old, new in changes:
        ui.info(machine, f"Devfile.lock: {old or '(none)'} -> {new}")
    if not changes:
        ui.info(None, "Devfile.lock is up to date")


@box_app.command("list")
@handle_errors
def box_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List built boxes (every provider) and the recipes that can be built."""
    from devenv.boxes import inventory
    from devenv.cli import ui
    from devenv.model.recipe import list_recipes

    reporter = _reporter()
    built = inventory.built_boxes(reporter)
    recipes = list_recipes(_project_root(), warn=reporter.warn)
    if json_out:
        rec = [
            {
                "name": r.name,
                "version": r.version,
                "description": r.description,
                "outputs": list(r.outputs),
                "path": str(r.path),
            }
            for r in recipes.values()
        ]
        print(json.dumps({"built": built, "recipes": rec}, indent=2))
        return
    ui.say("built:")
    if not built:
        ui.say("  (none)")
    for b in built:
        size = f"{(b['size'] or 0) / 1e6:.0f} MB"
        ui.say(f"  {b['name']}@{b['version']:<12} {b['provider']:<8} {size:>8}  {b['digest'][:19]}")
    ui.say("recipes:")
    for r in recipes.values():
        ui.say(f"  {r.name}@{r.version:<12} {','.join(r.outputs):<15} {r.description}")


@box_app.command("remove")
@handle_errors
def box_remove(name: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")]) -> None:
    """Remove a built box (all its versions and providers unless a version is named)."""
    from devenv.boxes import inventory
    from devenv.cli import ui

    for tag in inventory.remove(name, _reporter()):
        ui.info(None, f"removed {tag}")
