"""`devenv import-vagrant [PATH] [-o Devfile] [--driver docker|libvirt]`: a native Devfile from an
existing Vagrant project's Vagrantfile (devenv/vagrantfile/), read with Ruby against devenv's
recorder, without Vagrant. `--bridge` writes what it wrote before: one `driver = "vagrant"`
machine per Vagrant machine, which Vagrant keeps running.

Registered on the CLI by ``register(app)``; the Vagrantfile reader, the driver and python-vagrant
load only when the command runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

NAME_MAX = 41  # devenv machine names: devfile.NAME_PATTERN
DRIVERS = ("docker", "libvirt")
OVERWRITE_HINT = "pass --force to overwrite it, or print the Devfile (no -o) and paste it"


def devenv_name(vagrant_name: str, taken: set[str]) -> str:
    """A valid devenv machine name for a Vagrant machine name, unique among ``taken``."""
    from devenv.vagrantfile.mapping import devenv_name as name

    return name(vagrant_name, taken)


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def render(machines: list[tuple[str, str | None, str | None]], folder: Path, dir_text: str) -> str:
    """The --bridge Devfile text: ``machines`` are (vagrant name, state, provider)."""
    lines = [
        f"# The machines of the Vagrant project in {folder}, run by Vagrant through devenv's bridge driver",
        "# (written by `devenv import-vagrant --bridge`). Vagrant keeps the box, network, synced folders and",
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


def _inside(path: Path, base: Path) -> bool:
    return path == base or str(path).startswith(str(base).rstrip("/") + "/")


def devfile_base(folder: Path, output: Path | None) -> Path:
    """The folder the Devfile goes in, which devenv takes as the project root: -o's folder, which
    must hold the Vagrant project (every path the Vagrantfile names is written relative to it);
    printed, the current folder when it holds the project (`> Devfile` puts it there), else the
    project folder itself."""
    from devenv.errors import UsageError

    if output is None:
        here = Path(os.path.realpath(Path.cwd()))
        return here if _inside(folder, here) else folder
    parent = output.expanduser().absolute().parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {output}: the folder {parent} does not exist")
    base = Path(os.path.realpath(parent))
    if not _inside(folder, base):
        raise UsageError(
            f"cannot write the Devfile in {base}: the Vagrant project {folder} is not inside that folder",
            hint="a Devfile's folder is its project root, and the Vagrantfile's folder, scripts and synced folders "
            f"must be inside it: write it in {folder} or a folder above it (-o {folder / 'Devfile'})",
        )
    return base


def register(app: typer.Typer) -> None:
    from devenv.cli.common import handle_errors

    @app.command("import-vagrant")
    @handle_errors
    def import_vagrant(
        path: Annotated[
            Path, typer.Argument(help="The Vagrant project's folder (or its Vagrantfile)", show_default=False)
        ] = Path("."),
        output: Annotated[
            Optional[Path], typer.Option("-o", "--output", help="Write the Devfile there instead of printing it")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite the -o file when it exists")] = False,
        driver: Annotated[
            str,
            typer.Option(
                "--driver",
                help="Machines for this driver: docker (containers) or libvirt (VMs)",
                metavar="docker|libvirt",
            ),
        ] = "docker",
        bridge: Annotated[
            bool, typer.Option("--bridge", help='Machines Vagrant runs (driver = "vagrant") instead of native ones')
        ] = False,
        timeout: Annotated[
            float, typer.Option("--timeout", help="Seconds the Vagrantfile may take to load", min=0.1)
        ] = 10.0,
    ) -> None:
        """Write a native Devfile (docker or libvirt machines) from a Vagrant project's Vagrantfile."""
        from devenv.cli import ui
        from devenv.errors import UsageError

        if driver not in DRIVERS:
            raise UsageError(f"--driver {driver}: not one of {', '.join(DRIVERS)}", hint="--driver libvirt for VMs")
        if output is not None and (output.exists() or output.is_symlink()) and not force:
            raise UsageError(f"{output} already exists", hint=OVERWRITE_HINT)
        if bridge:
            if driver != "docker":
                raise UsageError("--bridge machines are Vagrant's: --driver does not apply to them")
            text, summary = _bridge(path, output)
        else:
            from devenv.vagrantfile import import_vagrantfile
            from devenv.vagrantfile.evaluate import find_vagrantfile

            vagrantfile = find_vagrantfile(path.expanduser().absolute())
            folder = Path(os.path.realpath(vagrantfile.parent))
            base = devfile_base(folder, output)
            target = output.expanduser().absolute() if output is not None else base / "Devfile"
            imported = import_vagrantfile(vagrantfile, target, driver=driver, timeout=timeout)
            text = imported.text
            names = ", ".join(n for n, _ in imported.machines)
            notes = f"; {imported.notes} note(s) say what changed or was not carried over" if imported.notes else ""
            summary = f"{len(imported.machines)} {driver} machine(s): {names}{notes}"
        if output is None:
            print(text, end="")
            return
        from devenv.paths import write_new_file

        # Never through a link planted as OUT (exists() above is only the early, friendly check).
        write_new_file(output, text, force=force, hint=OVERWRITE_HINT)
        ui.info(None, f"wrote {output} ({summary}); next: `devenv validate`, `devenv up`")


def _bridge(path: Path, output: Path | None) -> tuple[str, str]:
    """The --bridge Devfile: Vagrant's own `status` lists the machines (Vagrant must be usable)."""
    from devenv.drivers.vagrant.driver import find_vagrantfile
    from devenv.errors import UsageError
    from devenv.plugins import get_driver

    folder = path.expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(f"{path} is not a folder", hint="give the folder that holds the Vagrantfile")
    if find_vagrantfile(folder) is None:
        raise UsageError(f"no Vagrantfile in {folder}", hint="give the folder that holds the Vagrantfile")
    base = devfile_base(folder, output)
    vagrant = get_driver("vagrant")
    vagrant.check_available()
    machines = vagrant.list_machines(folder)  # type: ignore[attr-defined]
    if not machines:
        raise UsageError(f"the Vagrantfile in {folder} defines no machine")
    dir_text = Path(os.path.relpath(folder, base)).as_posix()
    names = ", ".join(m[0] for m in machines)
    return render(machines, folder, dir_text), f"{len(machines)} machine(s): {names}"
