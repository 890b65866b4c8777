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
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_quiet = False
_debug = False

_COLOURS = {"green": "32", "red": "31", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}
# style() marks colour with private-use characters and a per-process random tag, turned into real
# escape sequences only when the line is written, around text that is escaped: input can neither
# smuggle an escape sequence in nor forge a mark (it cannot know the tag), and ours still render.
_SGR_OPEN, _SGR_CLOSE = "\ue000" + os.urandom(8).hex(), "\ue001"
_SGR = re.compile(f"{_SGR_OPEN}([0-9;]+){_SGR_CLOSE}")


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
    """``text`` in a colour when ``stream`` (default stdout) shows colour; only for ui's own output."""
    stream = stream or sys.stdout
    if not _use_colour(stream):
        return text
    return f"{_SGR_OPEN}{_COLOURS[colour]}{_SGR_CLOSE}{text}{_SGR_OPEN}0{_SGR_CLOSE}"


# -- what reaches the terminal -------------------------------------------------------------------

# C0 controls but newline and tab, DEL, C1 controls, the bidi controls (embeddings, overrides,
# isolates, marks), line/paragraph separators, lone surrogates (undecodable bytes of a path: they
# cannot even be encoded on a strict stream), and the two private-use characters style() uses.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff\ue000\ue001]"
)


def _escape_char(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every character that acts on a terminal shown as an escape (``\\x1b``, ``\\u202e``).

    Newlines and tabs stay: a message may have several lines.
    """
    return _UNSAFE.sub(_escape_char, text)


# -- secrets -------------------------------------------------------------------------------------

# A secret shorter than this is not replaced inside other text (a 2-character secret would
# garble every line it happens to occur in); it is still masked when it is a whole line.
MIN_SECRET = 3
_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_short: set[str] = set()
_pattern: re.Pattern[str] | None = None
# Pieces of a secret between control characters also count: output is split into lines, and a C
# program stops at a NUL, so a multi-line or NUL-carrying secret may be printed in parts.
# Undecodable bytes count as such a break too: a from_env value keeps them as lone surrogates, and
# a machine echoing them is read back with U+FFFD (or nothing, or \xNN) in their place.
_PIECES = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff\ufffd]+")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _go_quote(value: str) -> str:
    """The body of Go's strconv.Quote(value): how the Docker engine quotes values in its errors."""
    out = []
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in named:
            out.append(named[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def _read_back(value: str) -> set[str]:
    """``value`` as it reads back after its bytes went through a machine and were decoded again.

    A value holding lone surrogates (undecodable bytes of a host environment variable or file)
    is sent as those bytes; output decoders put U+FFFD, nothing or ``\\xNN`` in their place."""
    if not _SURROGATE.search(value):
        return {value}
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    return {value, *(raw.decode("utf-8", how) for how in ("replace", "ignore", "backslashreplace"))}


def _forms(value: str) -> set[str]:
    """Every way the value may show up in text: as is, and quoted or escaped the usual ways."""
    import json
    import shlex

    forms: set[str] = set()
    for v in _read_back(value):
        forms |= {
            v,
            json.dumps(v)[1:-1],
            json.dumps(v, ensure_ascii=False)[1:-1],
            repr(v)[1:-1],
            repr(v + "'")[1:-2],  # repr's other quoting style (a value with both quotes)
            v.encode("unicode_escape", "backslashreplace").decode("ascii"),
            _go_quote(v),
            shlex.quote(v),
            escape(v),
        }
    for piece in _PIECES.split(value):
        if len(piece.strip()) >= MIN_SECRET:
            forms |= {piece, escape(piece)}
    return {f for f in forms if f}


def add_secret(value: str) -> None:
    """Never print this value again in this process: it is replaced by ``***`` in every form above."""
    global _pattern
    if not value or not value.strip():
        return
    with _secrets_lock:
        if len(value.strip()) < MIN_SECRET:
            _short.add(value.strip())
            return
        if value in _secrets:
            return
        _secrets.add(value)
        forms: set[str] = set()
        for s in _secrets:
            forms |= _forms(s)
        # Longest first: the regex takes the first alternative that matches at a position.
        _pattern = re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


def mask(text: str) -> str:
    """``text`` with every known secret replaced by ``***``."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub("***", text)
    if _short:
        lines = text.split("\n")
        text = "\n".join("***" if line.strip() and line.strip() in _short else line for line in lines)
    return text


def head(text: str, limit: int, more: str = "...") -> str:
    """At most ``limit`` characters from the start of ``text``, ``more`` marking a cut.

    Masked *before* the cut: a secret the cut falls inside would no longer match any form of it,
    and its first part would be printed. Every cut of text that may hold a secret goes here."""
    text = mask(text)
    return text if len(text) <= limit else text[: max(limit - len(more), 0)] + more


def tail(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text``, masked before the cut (see :func:`head`)."""
    text = mask(text)
    return text if len(text) <= limit else text[len(text) - limit :]


def clean(text: str) -> str:
    """What may reach the terminal of ``text``: secrets masked, terminal controls escaped."""
    return escape(mask(text))


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


def problem(text: str) -> None:
    """One problem line (Devfile problems) on stderr, as it is, but cleaned like every line."""
    _write("", text, sys.stderr)


def info(machine: str | None, text: str) -> None:
    """A progress line about a machine (or the project when machine is None), on stderr.

    Progress goes to stderr so that stdout stays clean for ``--json`` and command output.
    """
    if _quiet:
        return
    label = f"==> {escape(machine)}:" if machine else "==>"
    _write(style(label, "bold", sys.stderr) + " ", text, sys.stderr)


def detail(machine: str | None, text: str) -> None:
    """Indented output under a machine line (provisioner output)."""
    if _quiet:
        return
    prefix = f"    {escape(machine)}:" if machine else "   "
    _write(style(prefix, "dim", sys.stderr) + " ", text, sys.stderr)


def warn(text: str) -> None:
    _write(style("warning: ", "yellow", sys.stderr), text, sys.stderr)


def error(message: str, hint_text: str | None = None) -> None:
    _write(style("error: ", "red", sys.stderr), message, sys.stderr)
    if hint_text:
        hint(hint_text)


def hint(text: str) -> None:
    _write(style("hint: ", "cyan", sys.stderr), text, sys.stderr)


def debug(text: str) -> None:
    if _debug:
        _write(style("debug: ", "dim", sys.stderr), text, sys.stderr)


def format_exception(exc: BaseException) -> str:
    """The traceback of ``exc`` (its causes, context and notes included), cleaned like every line."""
    import traceback

    return clean("".join(traceback.format_exception(exc)).rstrip("\n"))


def exception(exc: BaseException) -> None:
    """Print the traceback of ``exc`` on stderr (``--debug``): secrets masked, controls escaped."""
    text = format_exception(exc)
    with _lock:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


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
