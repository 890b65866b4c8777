"""What may leave devenv of a text: secrets masked, terminal controls escaped.

Every line devenv shows (progress, errors, JSON events, command output) goes through
:func:`clean` at the CLI, and every cut of a text that may hold a secret through :func:`head` /
:func:`tail`, which mask *before* they cut. Secret values are registered once with
:func:`add_secret` (the core does it for every from_env value it reads). Pure functions and one
process-wide registry: nothing here prints.
"""

from __future__ import annotations

import re
import threading

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


def format_exception(exc: BaseException) -> str:
    """The traceback of ``exc`` (its causes, context and notes included), cleaned like every line."""
    import traceback

    return clean("".join(traceback.format_exception(exc)).rstrip("\n"))
