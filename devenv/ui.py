"""All user-facing output.

Kept free of heavy imports (no rich): the CLI's start-up time is a product feature.
Lines about a machine are prefixed ``==> NAME:``; colour only on a TTY and never with NO_COLOR.
Output from several threads (parallel ``up``) is serialised by one lock so lines never interleave.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_quiet = False
_debug = False

_COLOURS = {"green": "32", "red": "31", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}


def configure(*, quiet: bool = False, debug: bool = False) -> None:
    global _quiet, _debug
    _quiet, _debug = quiet, debug


def debug_enabled() -> bool:
    return _debug


def _use_colour(stream) -> bool:
    if os.environ.get("NO_COLOR") is not None or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def style(text: str, colour: str, stream=None) -> str:
    stream = stream or sys.stdout
    if not _use_colour(stream):
        return text
    return f"\033[{_COLOURS[colour]}m{text}\033[0m"


_secrets: set[str] = set()


def add_secret(value: str) -> None:
    """Never print this value again in this process: it is replaced by ***."""
    if value and len(value) >= 3:
        _secrets.add(value)


def mask(text: str) -> str:
    for s in sorted(_secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, "***")
    return text


def _write(text: str, stream) -> None:
    text = mask(text)
    with _lock:
        stream.write(text + "\n")
        stream.flush()


def say(text: str = "") -> None:
    """A plain line on stdout (results, tables)."""
    _write(text, sys.stdout)


def info(machine: str | None, text: str) -> None:
    """A progress line about a machine (or the project when machine is None), on stderr.

    Progress goes to stderr so that stdout stays clean for ``--json`` and command output.
    """
    if _quiet:
        return
    prefix = style(f"==> {machine}:", "bold", sys.stderr) if machine else style("==>", "bold", sys.stderr)
    _write(f"{prefix} {text}", sys.stderr)


def detail(machine: str | None, text: str) -> None:
    """Indented output under a machine line (provisioner output)."""
    if _quiet:
        return
    prefix = f"    {machine}:" if machine else "   "
    _write(f"{style(prefix, 'dim', sys.stderr)} {text}", sys.stderr)


def warn(text: str) -> None:
    _write(style("warning: ", "yellow", sys.stderr) + text, sys.stderr)


def error(message: str, hint_text: str | None = None) -> None:
    _write(style("error: ", "red", sys.stderr) + message, sys.stderr)
    if hint_text:
        hint(hint_text)


def hint(text: str) -> None:
    _write(style("hint: ", "cyan", sys.stderr) + text, sys.stderr)


def debug(text: str) -> None:
    if _debug:
        _write(style(f"debug: {text}", "dim", sys.stderr), sys.stderr)


@contextmanager
def progress(machine: str | None, text: str, *, every: float = 5.0) -> Iterator[None]:
    """Announce long work and keep saying it is alive, so a slow build never looks hung.

    Prints the start line, then an elapsed-time line every ``every`` seconds, then the total.
    """
    info(machine, text + " ...")
    start = time.monotonic()
    done = threading.Event()

    def ticker() -> None:
        while not done.wait(every):
            info(machine, f"{text} ... {time.monotonic() - start:.0f}s")

    t = threading.Thread(target=ticker, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()
    # Only reached when the work succeeded: a failure is reported by the caller's error.
    info(machine, f"{text}: done in {time.monotonic() - start:.1f}s")
