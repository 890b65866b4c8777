"""What every command shares: the global options, the project it works on, and the one place a
DevenvError becomes a message and an exit code (handle_errors)."""

from __future__ import annotations

import functools
import gc
import os
import sys
from typing import Annotated, Any, Optional

import typer

from devenv.cli import ui
from devenv.errors import DevenvError, DevfileError

# Set by the app's callback from the global options (-f).
options: dict[str, Any] = {"file": None}

NamesArg = Annotated[Optional[list[str]], typer.Argument(help="Machines (default: all)", show_default=False)]


def exit_code_for(exc: BaseException) -> int:
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
            raise typer.Exit(exit_code_for(exc)) from None
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


def load_devfile():
    """The Devfile -f names, or the one found from the current folder upwards."""
    from devenv.model import devfile

    path = options["file"]
    return devfile.load(path.absolute() if path else None)  # load() resolves links (a loop: an error)


def open_project():
    """The project of that Devfile, reporting through the CLI's renderer."""
    from devenv.cli.render import reporter
    from devenv.core.project import Project

    return Project(load_devfile(), reporter())


def host_notice(df, box: str | None = None) -> None:
    """Once per project: what in the Devfile (and the box recipes it builds from, ``box`` = `up
    --box`) runs code on this host (ansible) or reads host files."""
    from devenv.state import first_use_notice

    text = first_use_notice(df, extra_boxes=(box,) if box else ())
    if text:
        ui.warn(text)
