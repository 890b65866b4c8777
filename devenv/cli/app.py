"""The devenv command line (typer). The only place a DevenvError becomes an exit code.

Exit codes: 0 ok; 1 unexpected internal error; 2 bad usage or invalid Devfile; 3 engine
unavailable; 4 machine not in a state the verb needs; 5 a provision step failed; 6 a command
devenv ran failed; 7 box error; 8 unreadable state; 9 project lock timeout; 10 unsupported by
the driver; 11 host port in use; 130 interrupted. `ssh -c` and `exec` exit with the command's code.
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from devenv import __version__
from devenv.cli import ui
from devenv.errors import DevenvError, DevfileError, UsageError

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
snapshot_app = typer.Typer(
    help="Save and restore VM snapshots (libvirt).", no_args_is_help=True, suggest_commands=False
)
app.add_typer(snapshot_app, name="snapshot")

_options: dict[str, Any] = {"file": None}


def _exit_for(exc: BaseException) -> int:
    if isinstance(exc, DevenvError):
        ui.error(exc.message, None if isinstance(exc, DevfileError) and exc.problems else exc.hint)
        if isinstance(exc, DevfileError) and exc.problems:
            for p in exc.problems:
                ui.problem(f"  {p}")
            if exc.hint:
                ui.hint(exc.hint)
        return exc.exit_code
    return 1


def handle_errors(fn):
    """Expected failures become one message and an exit code; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # Start-up is over (devenv/__init__.py): what exists now lives for the whole command.
        gc.freeze()
        gc.enable()
        try:
            rv = fn(*args, **kwargs)
        except typer.Exit:
            raise
        except DevenvError as exc:
            if ui.debug_enabled():
                ui.exception(exc)  # masked and escaped like every line (a step's output is in it)
            raise typer.Exit(_exit_for(exc)) from None
        except KeyboardInterrupt as exc:
            if ui.debug_enabled():
                ui.exception(exc)
            ui.error("interrupted: what was being created has been removed")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            if not _stdout_gone():
                raise
            # `devenv box list | head`: the reader left; stop quietly like other Unix tools.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if ui.debug_enabled():
                ui.exception(exc)
            ui.error(
                f"internal error: {type(exc).__name__}: {ui.mask(str(exc))}",
                "this is a bug in devenv; run again with --debug for the traceback and report it",
            )
            raise typer.Exit(1) from None
        if isinstance(rv, int) and rv:
            raise typer.Exit(rv)
        return rv

    return wrapper


def _stdout_gone() -> bool:
    """True when stdout is a pipe whose reader has closed it (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _fd, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


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
    _options["file"] = file
    if progress not in ("text", "json"):
        ui.error(f"--progress {progress!r}: not one of text, json", "devenv --progress json up")
        raise typer.Exit(2)
    ui.configure(quiet=quiet, debug=debug or bool(os.environ.get("DEVENV_DEBUG")), json_lines=progress == "json")


def _devfile():
    from devenv.model import devfile

    path = _options["file"]
    return devfile.load(path.absolute() if path else None)  # load() resolves links (a loop: an error)


def _project():
    from devenv.cli.render import reporter
    from devenv.core.project import Project

    return Project(_devfile(), reporter())


def _host_notice(df, box: str | None = None) -> None:
    """Once per project: what in the Devfile (and the box recipes it builds from, ``box`` = `up
    --box`) runs code on this host (ansible) or reads host files."""
    from devenv.state import first_use_notice

    text = first_use_notice(df, extra_boxes=(box,) if box else ())
    if text:
        ui.warn(text)


NamesArg = Annotated[Optional[list[str]], typer.Argument(help="Machines (default: all)", show_default=False)]


# -- Devfile commands ---------------------------------------------------------------------------


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


@app.command()
@handle_errors
def init(
    box: Annotated[str, typer.Option(help="Box for the first machine")] = "debian-12",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing Devfile")] = False,
) -> None:
    """Write a starter Devfile in the current folder."""
    from devenv.model.devfile import default_project_name
    from devenv.paths import write_new_file

    path = Path(_options["file"] or "Devfile")
    # Created with O_EXCL|O_NOFOLLOW: a planted (even dangling) link named Devfile is refused.
    write_new_file(
        path,
        _TEMPLATE.format(name=default_project_name(Path.cwd()), box=box),
        force=force,
        hint="edit it, or pass --force to overwrite it",
    )
    ui.info(None, f"wrote {path}; next: `devenv up`")


@app.command()
@handle_errors
def validate(json_out: Annotated[bool, typer.Option("--json", help="Problems as JSON")] = False) -> int:
    """Check the Devfile and report every problem at once."""
    from devenv.model import devfile

    path = _options["file"].absolute() if _options["file"] else devfile.find_devfile()
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
    _host_notice(df)
    ui.say(f"{devfile.display_path(path)} is valid: {len(df.machines)} machine(s): {', '.join(df.machines)}")
    return 0


@app.command()
@handle_errors
def schema() -> None:
    """Print the JSON Schema of the Devfile (for editors)."""
    from devenv.model.devfile import json_schema

    print(json.dumps(json_schema(), indent=2))


# -- lifecycle ---------------------------------------------------------------------------------


def _sigterm_as_interrupt() -> None:
    # `kill PID` gets the same cleanup as Ctrl-C: no half-created machine is left behind.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


@app.command()
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
    project = _project()
    _host_notice(project.devfile, box)
    project.up(names, provision=not no_provision, box=box, frozen=frozen)


@app.command()
@handle_errors
def halt(
    names: NamesArg = None,
    force: Annotated[bool, typer.Option("--force", help="Power off without a clean shutdown")] = False,
) -> None:
    """Stop machines (they keep their disks; `up` starts them again)."""
    _project().halt(names, force=force)


@app.command()
@handle_errors
def reload(
    names: NamesArg = None,
    no_provision: Annotated[bool, typer.Option("--no-provision")] = False,
    recreate: Annotated[bool, typer.Option("--recreate", help="Replace the machine (its disk is lost)")] = False,
) -> None:
    """Restart machines with the Devfile's current settings (in place where the driver can)."""
    _sigterm_as_interrupt()
    project = _project()
    _host_notice(project.devfile)
    project.reload(names, provision=not no_provision, recreate=recreate)


@app.command()
@handle_errors
def provision(
    names: NamesArg = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun every step")] = False,
    with_: Annotated[Optional[list[str]], typer.Option("--with", help="Run only these steps (name or index)")] = None,
) -> None:
    """Run the provision steps that changed (and every step after them)."""
    project = _project()
    _host_notice(project.devfile)
    project.provision(names, force=force, only=with_)


@app.command()
@handle_errors
def destroy(
    names: NamesArg = None,
    force: Annotated[bool, typer.Option("-f", "--force", help="Do not ask for confirmation")] = False,
) -> None:
    """Remove machines and everything devenv made for them."""
    project = _project()
    wanted = project.names(names)
    if not force and sys.stdin.isatty():
        if not typer.confirm(f"Destroy {', '.join(wanted)}?", default=False):
            ui.info(None, "nothing destroyed")
            return
    project.destroy(names)


@app.command()
@handle_errors
def suspend(names: NamesArg = None) -> None:
    """Freeze machines in memory (Docker: pause)."""
    _project().suspend(names)


@app.command()
@handle_errors
def resume(names: NamesArg = None) -> None:
    """Resume suspended machines."""
    _project().resume(names)


# -- inspection --------------------------------------------------------------------------------


@app.command()
@handle_errors
def status(
    names: NamesArg = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per machine, in an array")] = False,
) -> None:
    """Show each machine's state, provisioning drift and ports (asked live from the engine)."""
    from devenv.cli.status import as_json, provision_text, settings_text

    rows = _project().status(names)
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


@app.command()
@handle_errors
def port(
    name: Annotated[Optional[str], typer.Argument(help="Machine (optional when there is only one)")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List a machine's forwarded ports."""
    project = _project()
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


@app.command("global-status")
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


# -- in the machine ----------------------------------------------------------------------------


@app.command()
@handle_errors
def ssh(
    name: Annotated[Optional[str], typer.Argument(help="Machine (optional when there is only one)")] = None,
    command: Annotated[Optional[str], typer.Option("-c", "--command", help="Run this and exit with its code")] = None,
) -> int:
    """Open a shell in a machine, or run one command with -c."""
    project = _project()
    return project.ssh(project.only_machine(name, "ssh"), command, out=ui.stdout_line, err=ui.stderr_line)


@app.command("exec", context_settings={"allow_interspersed_args": False})
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
    return _project().exec(name, argv, interactive=interactive, out=ui.stdout_line, err=ui.stderr_line)


@app.command()
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

    project = _project()
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


@app.command()
@handle_errors
def doctor(json_out: Annotated[bool, typer.Option("--json")] = False) -> int:
    """Check what this machine has for the Devfile (engines, tools, disk, ports), with a fix for each miss."""
    from devenv.core.doctor import run_checks

    try:
        project = _project()
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


@app.command("ssh-config")
@handle_errors
def ssh_config(names: NamesArg = None) -> None:
    """Print an ssh config block per VM (pinned host key) for `ssh -F` or VS Code Remote-SSH."""
    # Through ui like every line (masked, controls escaped): this text is appended to ~/.ssh/config.
    ui.say(_project().ssh_config(names).rstrip("\n"))


@app.command()
@handle_errors
def rsync(names: NamesArg = None) -> None:
    """Push copied (rsync-type) sync folders into running machines again."""
    _project().rsync(names)


# -- snapshots ---------------------------------------------------------------------------------

MachineArg = Annotated[str, typer.Argument(help="Machine")]
SnapArg = Annotated[str, typer.Argument(help="Snapshot name")]


@snapshot_app.command("save")
@handle_errors
def snapshot_save(name: MachineArg, snap: SnapArg) -> None:
    """Take a snapshot of a machine (running or stopped)."""
    _project().snapshot("save", name, snap)


@snapshot_app.command("restore")
@handle_errors
def snapshot_restore(name: MachineArg, snap: SnapArg) -> None:
    """Return a machine to a snapshot."""
    _project().snapshot("restore", name, snap)


@snapshot_app.command("delete")
@handle_errors
def snapshot_delete(name: MachineArg, snap: SnapArg) -> None:
    """Delete a snapshot."""
    _project().snapshot("delete", name, snap)


@snapshot_app.command("list")
@handle_errors
def snapshot_list(name: MachineArg, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List a machine's snapshots."""
    snaps = _project().snapshot("list", name)
    if json_out:
        print(json.dumps(snaps))
        return
    for sn in snaps:
        ui.say(sn)
    if not snaps:
        ui.say("(no snapshots)")


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
