"""Reporter events as the user sees them: ``==> NAME: ...`` lines, or JSON lines (``--progress json``).

The core, drivers, provisioners and box builders report through a devenv.contract.Reporter;
this is the one place its events become output (every string masked and escaped by ui).
"""

from __future__ import annotations

from devenv.cli import ui
from devenv.contract import Event, Reporter


def _text(event: Event) -> None:
    kind, machine, text = event.kind, event.machine, event.text
    if kind == "phase":
        if text:  # a phase without text (created, step-done, ready) is for event readers only
            ui.info(machine, text)
    elif kind == "info":
        ui.info(machine, text)
    elif kind == "output":
        ui.detail(machine, text)
    elif kind == "warning":
        ui.warn(f"{machine}: {text}" if machine and not text.startswith(f"{machine}:") else text)
    elif kind == "error":
        ui.error(text, event.data.get("hint"))
    elif kind == "debug":
        ui.debug(text)
    elif kind == "begin":
        ui.info(machine, text + " ...")
    elif kind == "tick":
        detail = f" ({event.data['detail']})" if event.data.get("detail") else ""
        ui.info(machine, f"{text} ... {event.data.get('elapsed', 0):.0f}s{detail}")
    elif kind == "end":
        ui.info(machine, f"{text}: done in {event.data.get('elapsed', 0):.1f}s")


def _json(event: Event) -> None:
    ui.json_event(event.kind, event.text, event.machine, phase=event.phase, at=event.time, **event.data)


def reporter() -> Reporter:
    """The reporter for this command, as -q/--debug/--progress configured the CLI."""
    return Reporter(_json if ui.json_enabled() else _text, debug=ui.debug_enabled())
