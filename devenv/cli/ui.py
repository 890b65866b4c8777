"""All user-facing output.

Kept free of heavy imports (no rich): the CLI's start-up time is a product feature.
Lines about a machine are prefixed ``==> NAME:``; colour only on a TTY and never with NO_COLOR.
Output from several threads (parallel ``up``) is serialised by one lock so lines never interleave.

Every line that leaves through this module is cleaned at this one place: secret values are
replaced by ``***`` (see :func:`mask`), then characters that would act on the terminal instead of
being shown (control characters, bidi overrides, lone surrogates) are escaped (see :func:`escape`).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time

from devenv.masking import add_secret, clean, escape, format_exception, head, mask, tail  # noqa: F401 - re-exported

_lock = threading.Lock()
_quiet = False
_debug = False
_json = False  # --progress json: every stderr line is one JSON object (stdout keeps the results)

_COLOURS = {"green": "32", "red": "31", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}
# style() marks colour with private-use characters and a per-process random tag, turned into real
# escape sequences only when the line is written, around text that is escaped: input can neither
# smuggle an escape sequence in nor forge a mark (it cannot know the tag), and ours still render.
_SGR_OPEN, _SGR_CLOSE = "\ue000" + os.urandom(8).hex(), "\ue001"
_SGR = re.compile(f"{_SGR_OPEN}([0-9;]+){_SGR_CLOSE}")


def configure(*, quiet: bool = False, debug: bool = False, json_lines: bool = False) -> None:
    global _quiet, _debug, _json
    _quiet, _debug, _json = quiet, debug, json_lines


def json_enabled() -> bool:
    return _json


def _clean_value(value):
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(str(k)): _clean_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_value(v) for v in value]
    return value if isinstance(value, (int, float, bool)) or value is None else clean(str(value))


def json_line(record: dict) -> None:
    """One JSON object on stderr (``--progress json``): every string in it masked and escaped."""
    import json

    line = json.dumps(_clean_value(record), ensure_ascii=False)
    with _lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def json_event(
    kind: str, text: str, machine: str | None = None, *, phase: str | None = None, at: float | None = None, **data
) -> None:
    """One --progress json line: the event's kind, machine, phase, message and time, then its data."""
    record = {"event": kind, "machine": machine, "phase": phase, "message": text, "time": round(at or time.time(), 3)}
    record.update({k: v for k, v in data.items() if k not in record})
    json_line(record)


def debug_enabled() -> bool:
    return _debug


def _use_colour(stream) -> bool:
    if os.environ.get("NO_COLOR") is not None or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def style(text: str, colour: str, stream=None) -> str:
    """``text`` in a colour when ``stream`` (default stdout) shows colour; only for ui's own output."""
    stream = stream or sys.stdout
    if not _use_colour(stream):
        return text
    return f"{_SGR_OPEN}{_COLOURS[colour]}{_SGR_CLOSE}{text}{_SGR_OPEN}0{_SGR_CLOSE}"


def _render(text: str, stream) -> str:
    """``text`` cleaned, its style() marks (only those: they carry this process's tag) as colour."""
    colour = _use_colour(stream)
    out, pos = [], 0
    for m in _SGR.finditer(text):
        out.append(clean(text[pos : m.start()]))
        out.append(f"\033[{m.group(1)}m" if colour else "")
        pos = m.end()
    out.append(clean(text[pos:]))
    return "".join(out)


def _write(prefix: str, text: str, stream) -> None:
    """One line: ``prefix`` is ui's own (styled) text, ``text`` may quote anything and is cleaned."""
    line = _render(prefix + text, stream)
    with _lock:
        stream.write(line + "\n")
        stream.flush()


def say(text: str = "") -> None:
    """A plain line on stdout (results, tables). ``style()`` parts inside render as colour."""
    _write("", text, sys.stdout)


def _passthrough(stream):
    def write(line: str) -> None:
        # A machine's own output, as it printed it (colours and all: the user asked for it), but
        # with every known secret masked.
        stream.write(mask(line) + "\n")
        stream.flush()

    return write


def stdout_line(line: str) -> None:
    """One line of a command's output in a machine (`ssh -c`, `exec`) on stdout."""
    _passthrough(sys.stdout)(line)


def stderr_line(line: str) -> None:
    _passthrough(sys.stderr)(line)


def problem(text: str) -> None:
    """One problem line (Devfile problems) on stderr, as it is, but cleaned like every line."""
    if _json:
        return json_event("problem", text.strip())
    _write("", text, sys.stderr)


def info(machine: str | None, text: str) -> None:
    """A progress line about a machine (or the project when machine is None), on stderr.

    Progress goes to stderr so that stdout stays clean for ``--json`` and command output.
    """
    if _json:
        return json_event("info", text, machine)
    if _quiet:
        return
    label = f"==> {escape(machine)}:" if machine else "==>"
    _write(style(label, "bold", sys.stderr) + " ", text, sys.stderr)


def detail(machine: str | None, text: str) -> None:
    """Indented output under a machine line (provisioner output)."""
    if _json:
        return json_event("output", text, machine)
    if _quiet:
        return
    prefix = f"    {escape(machine)}:" if machine else "   "
    _write(style(prefix, "dim", sys.stderr) + " ", text, sys.stderr)


def warn(text: str) -> None:
    if _json:
        return json_event("warning", text)
    _write(style("warning: ", "yellow", sys.stderr), text, sys.stderr)


def error(message: str, hint_text: str | None = None) -> None:
    if _json:
        return json_event("error", message, **({"hint": hint_text} if hint_text else {}))
    _write(style("error: ", "red", sys.stderr), message, sys.stderr)
    if hint_text:
        hint(hint_text)


def hint(text: str) -> None:
    if _json:
        return json_event("hint", text)
    _write(style("hint: ", "cyan", sys.stderr), text, sys.stderr)


def debug(text: str) -> None:
    if _debug:
        if _json:
            return json_event("debug", text)
        _write(style("debug: ", "dim", sys.stderr), text, sys.stderr)


def exception(exc: BaseException) -> None:
    """Print the traceback of ``exc`` on stderr (``--debug``): secrets masked, controls escaped."""
    text = format_exception(exc)
    with _lock:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
