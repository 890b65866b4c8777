"""`devenv import-vagrant PATH`: the Devfile machines that run an existing Vagrant project's
machines through the Vagrant bridge driver (one [machines.NAME] per Vagrant machine).

Registered on the CLI by ``register(app)``; the driver (and python-vagrant) load only when the
command runs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

NAME_MAX = 41  # devenv machine names: devfile.NAME_PATTERN


def devenv_name(vagrant_name: str, taken: set[str]) -> str:
    """A valid devenv machine name for a Vagrant machine name, unique among ``taken``."""
    base = re.sub(r"[^a-z0-9-]+", "-", vagrant_name.lower()).strip("-")[:NAME_MAX] or "machine"
    name, i = base, 2
    while name in taken:
        suffix = f"-{i}"
        name = base[: NAME_MAX - len(suffix)] + suffix
        i += 1
    taken.add(name)
    return name


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def render(machines: list[tuple[str, str | None, str | None]], folder: Path, dir_text: str) -> str:
    """The Devfile text: ``machines`` are (vagrant name, state, provider)."""
    lines = [
        f"# The machines of the Vagrant project in {folder}, run by Vagrant through devenv's bridge driver",
        "# (written by `devenv import-vagrant`). Vagrant keeps the box, network, synced folders and",
        "# resources (the Vagrantfile); devenv runs its own provision steps in the machines.",
        "",
    ]
    taken: set[str] = set()
    for vname, state, provider in machines:
        name = devenv_name(vname, taken)
        lines += [f"[machines.{name}]", 'driver = "vagrant"']
        if state:
            lines.append(f"# Vagrant state when imported: {state.replace('_', ' ')}")
        lines += [
            '# provision = [{ type = "shell", inline = "..." }]',
            "",
            f"[machines.{name}.vagrant]",
            f"dir = {_toml_str(dir_text)}",
            f"machine = {_toml_str(vname)}",
        ]
        if provider:
            lines.append(f"provider = {_toml_str(provider)}")
        lines.append("")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    from devenv.cli.common import handle_errors

    @app.command("import-vagrant")
    @handle_errors
    def import_vagrant(
        path: Annotated[Path, typer.Argument(help="Folder of the Vagrant project (with its Vagrantfile)")] = Path("."),
        output: Annotated[
            Optional[Path], typer.Option("-o", "--output", help="Write a Devfile there instead of printing")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite the -o file when it exists")] = False,
    ) -> None:
        """Print the Devfile machines that run an existing Vagrant project's machines (driver = "vagrant")."""
        from devenv.cli import ui
        from devenv.drivers.vagrant.driver import find_vagrantfile
        from devenv.errors import UsageError
        from devenv.plugins import get_driver

        folder = path.expanduser().resolve()
        if not folder.is_dir():
            raise UsageError(f"{path} is not a folder", hint="give the folder that holds the Vagrantfile")
        if find_vagrantfile(folder) is None:
            raise UsageError(f"no Vagrantfile in {folder}", hint="give the folder that holds the Vagrantfile")
        if output is not None and (output.exists() or output.is_symlink()) and not force:
            raise UsageError(
                f"{output} already exists", hint="pass --force to overwrite it, or print the section and paste it"
            )
        driver = get_driver("vagrant")
        driver.check_available()
        machines = driver.list_machines(folder)  # type: ignore[attr-defined]
        if not machines:
            raise UsageError(f"the Vagrantfile in {folder} defines no machine")
        base = (output.expanduser().resolve().parent if output is not None else Path.cwd()).resolve()
        try:
            dir_text = Path(os.path.relpath(folder, base)).as_posix()
        except ValueError:
            dir_text = str(folder)
        text = render(machines, folder, dir_text)
        if output is None:
            print(text, end="")
            return
        from devenv.paths import write_new_file

        # Never through a link planted as OUT (exists() above is only the early, friendly check).
        write_new_file(
            output, text, force=force, hint="pass --force to overwrite it, or print the section and paste it"
        )
        names = ", ".join(m[0] for m in machines)
        ui.info(None, f"wrote {output} ({len(machines)} machine(s): {names}); next: `devenv validate`, `devenv up`")
