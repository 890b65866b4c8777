"""The Devfile import-vagrant writes, as data with its comments, and its TOML text.

devenv reads TOML with tomllib, which cannot write; the few shapes a Devfile needs (tables,
arrays of inline tables, [[...provision]] tables, strings of any content) are written here, with
a comment wherever a note belongs. The text is checked afterwards by devenv's own loader.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

WIDTH = 100


@dataclass
class Note:
    """A comment in the Devfile: what Vagrant did that devenv does differently, or not at all."""

    text: str
    kind: str = "info"  # "lost": not carried over; "changed": carried over differently; "info"
    where: str | None = None  # "Vagrantfile:12"

    PREFIX = {"lost": "not carried over: ", "changed": "changed: ", "info": ""}

    @property
    def lossy(self) -> bool:
        return self.kind in ("lost", "changed")

    def line(self) -> str:
        where = f"{self.where}: " if self.where else ""
        return f"{where}{self.PREFIX.get(self.kind, '')}{self.text}"


@dataclass
class Item:
    """One element of an array (a port, a sync folder, a step); ``value`` None: only its notes."""

    value: Any
    notes: list[Note] = field(default_factory=list)

    def same(self, other: Item) -> bool:
        return self.value == other.value and [n.line() for n in self.notes] == [n.line() for n in other.notes]


@dataclass
class Entry:
    """``key = value`` with the notes above it; a list value is a list of Items."""

    value: Any
    notes: list[Note] = field(default_factory=list)
    # An empty list still written (`sync = []`): the machine must not inherit [defaults]' one.
    explicit: bool = False

    @property
    def items(self) -> list[Item]:
        """The array entries when the value is an array of Items (ports, sync, steps), else none."""
        if isinstance(self.value, list) and all(isinstance(i, Item) for i in self.value):
            return self.value
        return []

    def same(self, other: Entry) -> bool:
        if self.items and other.items:
            return len(self.value) == len(other.value) and all(
                a.same(b) for a, b in zip(self.value, other.value, strict=True)
            )
        return self.value == other.value and [n.line() for n in self.notes] == [n.line() for n in other.notes]


@dataclass
class Section:
    """A [table]: its keys, its sub-tables ([machines.NAME.docker]) and its [[NAME.provision]]."""

    name: str
    notes: list[Note] = field(default_factory=list)
    entries: dict[str, Entry] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: Entry | None = None


@dataclass
class Document:
    header: list[str]
    sections: list[Section]

    def notes(self) -> list[Note]:
        out: list[Note] = []
        for s in self.sections:
            out += s.notes
            for e in [*s.entries.values(), *([s.steps] if s.steps else [])]:
                out += e.notes
                for item in e.items:
                    out += item.notes
        return out


# ---------------------------------------------------------------------------------------------
# TOML


def _printable(text: str) -> str:
    """One line a TOML comment may hold: control characters and lone surrogates as escapes."""
    out = []
    for ch in text:
        if ch == "\t" or (ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def comment_lines(text: str, indent: str = "") -> list[str]:
    lines: list[str] = []
    for para in text.split("\n"):
        wrapped = textwrap.wrap(
            _printable(para), WIDTH - len(indent) - 2, break_long_words=False, break_on_hyphens=False
        ) or [""]
        first, rest = wrapped[0], wrapped[1:]
        lines.append(f"{indent}# {first}".rstrip())
        lines += [f"{indent}#   {w}" for w in rest]
    return lines


def basic_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but for DEL, which TOML wants escaped."""
    clean = text.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(text) else text
    return json.dumps(clean, ensure_ascii=False).replace("\x7f", "\\u007f")


def _has_surrogates(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


_LITERAL_OK = re.compile(r"[^\x00-\x08\x0b-\x1f\x7f]*")


def string(text: str) -> str:
    """A script keeps its lines: a multi-line literal string when it can be one, else escaped."""
    if (
        "\n" in text.rstrip("\n")
        and "'''" not in text
        and not text.endswith("'")
        and "\r" not in text
        and _LITERAL_OK.fullmatch(text)
        and not _has_surrogates(text)
    ):
        return "'''\n" + text + "'''"
    return basic_string(text)


def key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else basic_string(name)


def value(v: Any, *, multiline: bool = False) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return string(v) if multiline else basic_string(v)
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {type(v).__name__}")


def _array(name: str, items: list[Item]) -> list[str]:
    lines = [f"{key(name)} = ["]
    for item in items:
        for n in item.notes:
            lines += comment_lines(n.line(), "  ")
        if item.value is not None:
            lines.append(f"  {value(item.value)},")
    return lines + ["]"]


def _entry(name: str, e: Entry) -> list[str]:
    lines: list[str] = []
    for n in e.notes:
        lines += comment_lines(n.line())
    if isinstance(e.value, list) and (not e.value or isinstance(e.value[0], Item)):
        kept = [i for i in e.value if i.value is not None]
        if kept:
            return lines + _array(name, e.value)
        for item in e.value:  # nothing to write but what was left out: the notes alone
            for n in item.notes:
                lines += comment_lines(n.line())
        if e.explicit:
            lines.append(f"{key(name)} = []")
        return lines
    lines.append(f"{key(name)} = {value(e.value)}")
    return lines


def _steps(section: str, e: Entry) -> list[str]:
    lines: list[str] = []
    for n in e.notes:
        lines += comment_lines(n.line())
    for item in e.value:
        lines.append("")
        for n in item.notes:
            lines += comment_lines(n.line())
        if item.value is None:
            continue
        lines.append(f"[[{section}.provision]]")
        for k, v in item.value.items():
            lines.append(f"{key(k)} = {value(v, multiline=k == 'inline')}")
    return lines


def render(doc: Document) -> str:
    lines = [line for h in doc.header for line in comment_lines(h)]
    for s in doc.sections:
        lines.append("")
        for n in s.notes:
            lines += comment_lines(n.line())
        lines.append(f"[{s.name}]")
        for name, e in s.entries.items():
            lines += _entry(name, e)
        if s.steps is not None and s.steps.explicit and not any(i.value is not None for i in s.steps.value):
            lines += _entry("provision", s.steps)
        for sub, table in s.tables.items():
            lines += ["", f"[{s.name}.{key(sub)}]"]
            lines += [f"{key(k)} = {value(v)}" for k, v in table.items()]
        if s.steps is not None and any(i.value is not None for i in s.steps.value):
            lines += _steps(s.name, s.steps)
        elif s.steps is not None and not s.steps.explicit:
            lines += _entry("provision", s.steps)
    return "\n".join(lines).rstrip("\n") + "\n"
