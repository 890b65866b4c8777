"""A small declarative schema: one definition validates Devfiles and exports JSON Schema.

Each node checks a raw TOML value, appends Problems (never raises) and returns the value in
normal form, or MISSING when it is unusable, so that validation goes on and reports every
problem in one run.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()

# A login name as useradd accepts it by default: the one pattern for every place an SSH user
# enters (Devfile driver options, recipe sources, a box's devenv.json). It reaches ssh's command
# line and `devenv ssh-config` output, so no space, newline, quote or leading '-' may pass.
USER_NAME_PATTERN = r"[a-z_][a-z0-9_-]{0,31}"
USER_NAME_HELP = "a login name: lower-case letters, digits, '_' and '-', starting with a letter or '_'"


@dataclass(frozen=True)
class Problem:
    path: tuple
    message: str

    @property
    def key(self) -> str:
        return format_path(self.path)


def format_path(path: tuple) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            out += ("." if out else "") + text
    return out


def _shown(value: str, limit: int = 120) -> str:
    """A value quoted in a problem: one line (a newline in it would forge further problem lines)."""
    if not value.isprintable():
        value = value.encode("unicode_escape", "backslashreplace").decode("ascii")
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Node:
    description: str = ""

    def check(self, value: Any, path: tuple, problems: list[Problem]) -> Any:
        raise NotImplementedError

    def json_schema(self) -> dict:
        raise NotImplementedError

    def _described(self, schema: dict) -> dict:
        if self.description:
            schema["description"] = self.description
        return schema


@dataclass
class Str(Node):
    description: str = ""
    pattern: str | None = None
    pattern_help: str = ""
    # Any collection: the driver names are a live view (devenv.plugins.Names) that lists plugins
    # only when iterated (a problem's choices, the JSON Schema), never for a membership check.
    choices: Collection[str] = ()
    nonempty: bool = True

    def check(self, value, path, problems):
        if not isinstance(value, str):
            problems.append(Problem(path, f"expected a string, got {_type_name(value)}"))
            return MISSING
        if self.nonempty and not value.strip():
            problems.append(Problem(path, "must not be empty"))
            return MISSING
        if self.choices and value not in self.choices:
            options = ", ".join(self.choices)
            problems.append(
                Problem(path, f"'{_shown(value)}' is not one of: {options}{did_you_mean(value, self.choices)}")
            )
            return MISSING
        if self.pattern and not re.fullmatch(self.pattern, value):
            problems.append(Problem(path, f"'{_shown(value)}' is not valid: {self.pattern_help}"))
            return MISSING
        return value

    def json_schema(self):
        s: dict = {"type": "string"}
        if self.choices:
            s["enum"] = list(self.choices)
        if self.pattern:
            s["pattern"] = f"^(?:{self.pattern})$"
        return self._described(s)


@dataclass
class Int(Node):
    description: str = ""
    minimum: int | None = None
    maximum: int | None = None

    def check(self, value, path, problems):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(Problem(path, f"expected an integer, got {_type_name(value)}"))
            return MISSING
        if self.minimum is not None and value < self.minimum:
            problems.append(Problem(path, f"must be at least {self.minimum}, got {value}"))
            return MISSING
        if self.maximum is not None and value > self.maximum:
            problems.append(Problem(path, f"must be at most {self.maximum}, got {value}"))
            return MISSING
        return value

    def json_schema(self):
        s: dict = {"type": "integer"}
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        return self._described(s)


@dataclass
class Number(Node):
    description: str = ""
    exclusive_minimum: float | None = None

    def check(self, value, path, problems):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(Problem(path, f"expected a number, got {_type_name(value)}"))
            return MISSING
        if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
            problems.append(Problem(path, f"must be greater than {self.exclusive_minimum:g}, got {value}"))
            return MISSING
        return value

    def json_schema(self):
        s: dict = {"type": "number"}
        if self.exclusive_minimum is not None:
            s["exclusiveMinimum"] = self.exclusive_minimum
        return self._described(s)


@dataclass
class Bool(Node):
    description: str = ""

    def check(self, value, path, problems):
        if not isinstance(value, bool):
            problems.append(Problem(path, f"expected true or false, got {_type_name(value)}"))
            return MISSING
        return value

    def json_schema(self):
        return self._described({"type": "boolean"})


_SIZE_UNITS = {
    "": 1024**2,  # a bare number is MiB, as in Vagrant's providers
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(text: str | int) -> int | None:
    """'512MiB', '1GiB', '2g', 1024 (MiB) -> bytes; None when not a size."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text * 1024**2 if text > 0 else None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        return None
    n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    return n if n > 0 else None


@dataclass
class Size(Node):
    description: str = ""
    minimum: int = 4 * 1024**2

    def check(self, value, path, problems):
        n = parse_size(value) if isinstance(value, (str, int)) else None
        if n is None:
            got = repr(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else _type_name(value)
            problems.append(Problem(path, f'expected a size like "512MiB" or "2GiB" (a bare number is MiB), got {got}'))
            return MISSING
        if n < self.minimum:
            problems.append(Problem(path, f"{value!r} is too small (at least {self.minimum // 1024**2}MiB)"))
            return MISSING
        return n

    def json_schema(self):
        return self._described(
            {
                "oneOf": [
                    {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[A-Za-z]*\s*$"},
                    {"type": "integer", "minimum": 1},
                ]
            }
        )


@dataclass
class IPAddress(Node):
    description: str = ""

    def check(self, value, path, problems):
        if not isinstance(value, str):
            problems.append(Problem(path, f"expected an IP address string, got {_type_name(value)}"))
            return MISSING
        # Python accepts a scoped IPv6 address ("fe80::1%SCOPE") with any text as the scope; the
        # address is spliced into QEMU's -netdev option list and VBoxManage --natpf rules, where a
        # ',' or '%' would add options (guestfwd=...cmd: runs a host command). Plain addresses only.
        if "%" in value or "," in value or not value.isascii() or not value.isprintable():
            problems.append(Problem(path, f"{value!r} is not a plain IP address (no zone id, no ',')"))
            return MISSING
        try:
            import ipaddress

            ipaddress.ip_address(value)
        except ValueError:
            problems.append(Problem(path, f"'{value}' is not an IP address"))
            return MISSING
        return value

    def json_schema(self):
        return self._described({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})


@dataclass
class ListOf(Node):
    item: Node
    description: str = ""
    unique: bool = False
    # Keep MISSING in place of unusable items, so that later items keep their index (and line)
    keep_missing: bool = False

    def check(self, value, path, problems):
        if not isinstance(value, list):
            problems.append(Problem(path, f"expected an array, got {_type_name(value)}"))
            return MISSING
        out = []
        for i, v in enumerate(value):
            r = self.item.check(v, path + (i,), problems)
            if r is MISSING and self.keep_missing:
                out.append(r)
            elif r is not MISSING:
                if self.unique and r in out:
                    problems.append(Problem(path + (i,), f"{r!r} is listed twice"))
                    continue
                out.append(r)
        return out

    def json_schema(self):
        return self._described({"type": "array", "items": self.item.json_schema()})


@dataclass
class MapOf(Node):
    value: Node
    description: str = ""
    key_pattern: str | None = None
    key_help: str = ""

    def check(self, value, path, problems):
        if not isinstance(value, dict):
            problems.append(Problem(path, f"expected a table, got {_type_name(value)}"))
            return MISSING
        out = {}
        for k, v in value.items():
            if self.key_pattern and not re.fullmatch(self.key_pattern, k):
                problems.append(Problem(path + (k,), f"'{k}' is not a valid name: {self.key_help}"))
                continue
            r = self.value.check(v, path + (k,), problems)
            if r is not MISSING:
                out[k] = r
        return out

    def json_schema(self):
        s: dict = {"type": "object", "additionalProperties": self.value.json_schema()}
        if self.key_pattern:
            s["propertyNames"] = {"pattern": f"^(?:{self.key_pattern})$"}
        return self._described(s)


@dataclass
class Field:
    node: Node
    required: bool = False
    default: Any = MISSING


@dataclass
class Table(Node):
    fields: dict[str, Field]
    description: str = ""
    # extra_keys(value, path, problems) -> {key: checked value} for keys it took care of
    # (the driver tables of a machine, whose schemas live with the drivers)
    extra_keys: Callable[[dict, tuple, list], dict[str, Any]] | None = None
    # Names of the keys extra_keys handles (for "did you mean"), and their JSON Schema, built only
    # when a schema is exported: building it imports every driver, which `devenv status` must not pay.
    extra_names: Collection[str] = ()
    extra_schema: Callable[[], dict] | None = None
    check_fn: Callable[[dict, tuple, list], None] | None = None
    # What an unknown key most likely meant, by its name, when difflib cannot know (Vagrant's
    # `path` is devenv's `script`): the text follows "unknown key: ".
    hints: Mapping[str, str] = field(default_factory=dict)

    def check(self, value, path, problems, *, hints: Mapping[str, str] | None = None):
        """``hints``: more of them, from the caller (a provisioner's table knows none of Vagrant's)."""
        if not isinstance(value, dict):
            problems.append(Problem(path, f"expected a table, got {_type_name(value)}"))
            return MISSING
        handled = self.extra_keys(value, path, problems) if self.extra_keys else {}
        out: dict = {}
        for k, v in value.items():
            if k in handled:
                continue
            f = self.fields.get(k)
            if f is None:
                hint = (hints or {}).get(k) or self.hints.get(k)
                if hint:
                    problems.append(Problem(path + (k,), f"unknown key: {hint}"))
                    continue
                known = list(self.fields) + list(self.extra_names)
                problems.append(Problem(path + (k,), f"unknown key{did_you_mean(k, known)}"))
                continue
            r = f.node.check(v, path + (k,), problems)
            if r is not MISSING:
                out[k] = r
        for k, f in self.fields.items():
            if k in value:
                continue
            if f.required:
                problems.append(Problem(path + (k,), "is required"))
            elif f.default is not MISSING:
                out[k] = f.default() if callable(f.default) else f.default
        if self.check_fn:
            self.check_fn(out, path, problems)
        for k, v in handled.items():
            if v is not MISSING:
                out[k] = v
        return out

    def json_schema(self):
        props = {k: f.node.json_schema() for k, f in self.fields.items()}
        props.update(self.extra_schema() if self.extra_schema else {})
        s: dict = {"type": "object", "properties": props, "additionalProperties": False}
        req = [k for k, f in self.fields.items() if f.required]
        if req:
            s["required"] = req
        return self._described(s)


@dataclass
class AnyOf(Node):
    """Try shapes by the value's TOML type (e.g. a port as a table or as "8080:80")."""

    by_type: dict[type, Node]
    description: str = ""
    expected: str = ""

    def check(self, value, path, problems):
        for t, node in self.by_type.items():
            if isinstance(value, t) and not (t is int and isinstance(value, bool)):
                return node.check(value, path, problems)
        problems.append(Problem(path, f"expected {self.expected}, got {_type_name(value)}"))
        return MISSING

    def json_schema(self):
        return self._described({"anyOf": [n.json_schema() for n in self.by_type.values()]})


@dataclass
class Custom(Node):
    """A node whose checking is a function (used for small shorthand grammars)."""

    fn: Callable[[Any, tuple, list], Any]
    schema: dict
    description: str = ""

    def check(self, value, path, problems):
        return self.fn(value, path, problems)

    def json_schema(self):
        return self._described(dict(self.schema))
