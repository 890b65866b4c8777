"""Commands on a project's machines: their lifecycle, status, and commands run in them."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from devenv.cli import ui
from devenv.cli.common import NamesArg, handle_errors, host_notice, open_project
from devenv.errors import DevenvError, UsageError


def _sigterm_as_interrupt() -> None:
    # `kill PID` gets the same cleanup as Ctrl-C: no half-created machine is left behind.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


@handle_errors
def up(
    names: NamesArg = None,
    no_provision: Annotated[bool, typer.Option("--no-provision", help="Do not run provision steps")] = False,
    box: Annotated[
        Optional[str],
        typer.Option(
            "--box",
            help="Make machines from this box (e.g. the production one: NAME@VERSION); Devfile.lock is not changed",
        ),
    ] = None,
    frozen: Annotated[bool, typer.Option("--frozen", help="Fail if Devfile.lock would change")] = False,
) -> None:
    """Create, start and provision machines (dependencies first)."""
    _sigterm_as_interrupt()
    project = open_project()
    host_notice(project.devfile, box)
    project.up(names, provision=not no_provision, box=box, frozen=frozen)


@handle_errors
def halt(
    names: NamesArg = None,
    force: Annotated[bool, typer.Option("--force", help="Power off without a clean shutdown")] = False,
) -> None:
    """Stop machines (they keep their disks; `up` starts them again)."""
    open_project().halt(names, force=force)


@handle_errors
def reload(
    names: NamesArg = None,
    no_provision: Annotated[bool, typer.Option("--no-provision")] = False,
    recreate: Annotated[bool, typer.Option("--recreate", help="Replace the machine (its disk is lost)")] = False,
) -> None:
    """Restart machines with the Devfile's current settings (in place where the driver can)."""
    _sigterm_as_interrupt()
    project = open_project()
    host_notice(project.devfile)
    project.reload(names, provision=not no_provision, recreate=recreate)


@handle_errors
def provision(
    names: NamesArg = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun every step")] = False,
    with_: Annotated[Optional[list[str]], typer.Option("--with", help="Run only these steps (name or index)")] = None,
) -> None:
    """Run the provision steps that changed (and every step after them)."""
    project = open_project()
    host_notice(project.devfile)
    project.provision(names, force=force, only=with_)


@handle_errors
def destroy(
    names: NamesArg = None,
    force: Annotated[bool, typer.Option("-f", "--force", help="Do not ask for confirmation")] = False,
) -> None:
    """Remove machines and everything devenv made for them."""
    project = open_project()
    wanted = project.names(names)
    if not force and sys.stdin.isatty():
        if not typer.confirm(f"Destroy {', '.join(wanted)}?", default=False):
            ui.info(None, "nothing destroyed")
            return
    project.destroy(names)


@handle_errors
def suspend(names: NamesArg = None) -> None:
    """Freeze machines in memory (Docker: pause)."""
    open_project().suspend(names)


@handle_errors
def resume(names: NamesArg = None) -> None:
    """Resume suspended machines."""
    open_project().resume(names)


@handle_errors
def status(
    names: NamesArg = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per machine, in an array")] = False,
) -> None:
    """Show each machine's state, provisioning drift and ports (asked live from the engine)."""
    from devenv.cli.status import as_json, provision_text, settings_text

    rows = open_project().status(names)
    if json_out:
        print(json.dumps([as_json(r) for r in rows], indent=2))
        return
    width = max((len(r.name) for r in rows), default=4)
    for r in rows:
        colour = {"running": "green", "stopped": "yellow"}.get(str(r.state), "dim")
        line = f"{r.name:<{width}}  {ui.style(f'{str(r.state):<11}', colour)}  {r.driver:<7}  {r.box or '-'}"
        ui.say(line)
        if r.baked_steps:
            ui.say(f"{'':<{width}}  from the box: steps {', '.join(f'[{i}]' for i in r.baked_steps)}")
        if r.provision not in ("up to date", "no steps", "not created"):
            ui.say(f"{'':<{width}}  provision: {provision_text(r)}")
        if r.drift:
            ui.say(f"{'':<{width}}  settings: {settings_text(r)}")
        for p in r.ports:
            ui.say(f"{'':<{width}}  port {p}")
        for net, ip in r.addresses.items():
            ui.say(f"{'':<{width}}  network {net}: {ip}")


@handle_errors
def port(
    name: Annotated[Optional[str], typer.Argument(help="Machine (optional when there is only one)")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List a machine's forwarded ports."""
    project = open_project()
    bindings = project.ports(project.only_machine(name, "port"))
    if json_out:
        print(
            json.dumps(
                [{"host_ip": b.host_ip, "host": b.host, "guest": b.guest, "protocol": b.protocol} for b in bindings],
                indent=2,
            )
        )
        return
    if not bindings:
        ui.say("(no forwarded ports)")
    for b in bindings:
        ui.say(f"{b.guest}/{b.protocol} -> {b.host_ip}:{b.host}")


@handle_errors
def global_status(
    json_out: Annotated[bool, typer.Option("--json")] = False,
    prune: Annotated[bool, typer.Option("--prune", help="Forget machines whose project or machine is gone")] = False,
) -> None:
    """Every machine devenv made on this host, across projects."""
    from devenv.cli.render import reporter
    from devenv.contract import MachineState
    from devenv.plugins import get_driver
    from devenv.state import GlobalIndex

    index = GlobalIndex(reporter=reporter())
    rows = []
    for e in index.entries():
        try:
            live = str(get_driver(e["driver"]).state(e["handle"]))
        except DevenvError:
            live = "unknown (engine unreachable)"
        gone = not Path(e.get("root", "")).is_dir() or live == str(MachineState.NOT_CREATED)
        if prune and gone:
            index.forget(e["project_id"], e["machine"])
            why = "machine gone" if live == "not created" else "project folder gone"
            ui.info(None, f"forgot {e['project']}/{e['machine']} ({why})")
            continue
        rows.append({**e, "state": live})
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        ui.say("no machines")
    for r in rows:
        ui.say(f"{r['project']:<16} {r['machine']:<12} {r['driver']:<7} {r['state']:<12} {r['root']}")


@handle_errors
def ssh(
    name: Annotated[Optional[str], typer.Argument(help="Machine (optional when there is only one)")] = None,
    command: Annotated[Optional[str], typer.Option("-c", "--command", help="Run this and exit with its code")] = None,
) -> int:
    """Open a shell in a machine, or run one command with -c."""
    project = open_project()
    return project.ssh(project.only_machine(name, "ssh"), command, out=ui.stdout_line, err=ui.stderr_line)


@handle_errors
def exec_(
    name: Annotated[str, typer.Argument(help="Machine")],
    argv: Annotated[list[str], typer.Argument(help="Command and arguments (after --)")],
    interactive: Annotated[
        bool, typer.Option("-i", "--interactive", help="Attach stdin (and a TTY when there is one)")
    ] = False,
) -> int:
    """Run a command in a machine without a shell: devenv exec NAME -- ARGV..."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given", hint=f"devenv exec {name} -- COMMAND [ARGS...]")
    return open_project().exec(name, argv, interactive=interactive, out=ui.stdout_line, err=ui.stderr_line)


@handle_errors
def package(
    name: Annotated[Optional[str], typer.Argument(help="Machine (optional when there is only one)")] = None,
    box: Annotated[Optional[str], typer.Option("--box", help="Box name (default: PROJECT-MACHINE)")] = None,
    version: Annotated[Optional[str], typer.Option("--version", help="Box version (default: a timestamp)")] = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Also write a Vagrant .box file (VMs)")
    ] = None,
) -> None:
    """Turn a machine into a box (like `vagrant package`): a Docker image or a libvirt disk."""
    import time

    project = open_project()
    machine = project.only_machine(name, "package")
    box_name = box or f"{project.devfile.project_name}-{machine}"
    ver = version or time.strftime("%Y%m%d.%H%M%S")
    result = project.package(machine, box_name, ver)
    ui.info(machine, f"packaged as box {box_name}@{ver} ({result['provider']}, {result['digest'][:19]})")
    if output:
        from devenv.boxes import store, vagrantbox

        stored = store.find_stored(box_name, ver, "libvirt")
        if stored is None:
            raise UsageError(
                "--output writes a .box of a VM box; this machine is a container",
                hint=f"docker save {result['ref']} -o FILE exports the image instead",
            )
        vagrantbox.write_libvirt_box(stored, output)
        ui.info(machine, f"wrote {output}")


@handle_errors
def ssh_config(names: NamesArg = None) -> None:
    """Print an ssh config block per VM (pinned host key) for `ssh -F` or VS Code Remote-SSH."""
    # Through ui like every line (masked, controls escaped): this text is appended to ~/.ssh/config.
    ui.say(open_project().ssh_config(names).rstrip("\n"))


@handle_errors
def rsync(names: NamesArg = None) -> None:
    """Push copied (rsync-type) sync folders into running machines again."""
    open_project().rsync(names)
