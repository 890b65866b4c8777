"""Line numbers for TOML key paths, and a nesting-depth check that runs before parsing.

tomllib/tomli give values but no positions, and every Devfile problem must name its line.
The scanner runs over text that tomllib has already accepted, so it only needs to follow the
structure (tables, arrays of tables, keys, arrays, inline tables, strings) and never reports
syntax errors itself. It works token by token with compiled regular expressions (the C regex
engine does the per-character work) and keeps its own stack instead of recursing, so it is
linear in the size of the text and no nesting can exhaust Python's stack.
"""

from __future__ import annotations

import re

Path = tuple  # tuple[str | int, ...]

# Strings: possessive repeats (Python >= 3.11), so an unterminated string fails in linear time.
_ML_BASIC = r'"""(?:[^"\\]++|\\[\s\S]|"(?!""))*+"""(?:"{1,2}(?!"))?'
_ML_LITERAL = r"'''(?:[^']++|'(?!''))*+'''(?:'{1,2}(?!'))?"
_BASIC = r'"(?:[^"\\\n]++|\\.)*+"'
_LITERAL = r"'[^'\n]*+'"
_STRING = re.compile(f"{_ML_BASIC}|{_ML_LITERAL}|{_BASIC}|{_LITERAL}")
_WS = re.compile(r"(?:[ \t\r\n]++|#[^\n]*+)*+")
_WS_LINE = re.compile(r"(?:[ \t\r]++|#[^\n]*+)*+")
_BARE = re.compile(r"[A-Za-z0-9_-]++")
_SCALAR = re.compile(r"[^,\]}\n#]++")
_SEP = re.compile(r"(?:[ \t\r\n]++|#[^\n]*+)*+(?:,(?:[ \t\r\n]++|#[^\n]*+)*+)?")
# For the depth check: every string and comment (whose brackets do not count), and brackets.
_DEPTH = re.compile(f"{_ML_BASIC}|{_ML_LITERAL}|{_BASIC}|{_LITERAL}|#[^\\n]*+|[\\[\\]{{}}]")


def nesting_depth_exceeded(text: str, limit: int) -> int | None:
    """The line where arrays/inline tables nest deeper than ``limit``, or None.

    Run before the TOML parser (which recurses per level and would raise RecursionError on a
    few hundred levels). Table headers count as one or two levels, which a limit allows for.
    """
    depth = 0
    for m in _DEPTH.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > limit:
                return text.count("\n", 0, m.start()) + 1
        elif c in "]}":
            depth = max(0, depth - 1)
    return None


class _Done(Exception):
    """Every wanted path has its line: the rest of the text need not be read."""


class _Scanner:
    def __init__(self, text: str, wanted: set | None = None) -> None:
        self.wanted = wanted
        self.s = text
        self.n = len(text)
        self.i = 0
        self._line = 1
        self._line_at = 0
        self.locs: dict[Path, int] = {}
        self.aot: dict[Path, int] = {}  # array-of-tables path -> number of elements so far

    # -- low level -------------------------------------------------------------------------
    def line(self) -> int:
        # Positions only move forward: counting newlines since the last call keeps this linear.
        if self.i > self._line_at:
            self._line += self.s.count("\n", self._line_at, self.i)
            self._line_at = self.i
        return self._line

    def peek(self) -> str:
        return self.s[self.i] if self.i < self.n else ""

    def ws(self, newlines: bool) -> None:
        self.i = (_WS if newlines else _WS_LINE).match(self.s, self.i).end()

    def string(self) -> str:
        m = _STRING.match(self.s, self.i)
        if m is None:  # cannot happen in text tomllib accepted; step over the quote
            self.i += 1
            return ""
        self.i = m.end()
        tok = m.group()
        if tok.startswith(("'''", '"""')):
            return tok
        if tok[0] == "'" or "\\" not in tok:
            return tok[1:-1]
        import tomllib

        try:
            return tomllib.loads(f"k = {tok}")["k"]
        except (tomllib.TOMLDecodeError, KeyError):
            return tok[1:-1]

    def key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.ws(False)
            if self.peek() in ("'", '"'):
                parts.append(self.string())
            else:
                m = _BARE.match(self.s, self.i)
                parts.append(m.group() if m else "")
                if m:
                    self.i = m.end()
            self.ws(False)
            if self.peek() == ".":
                self.i += 1
                continue
            return parts

    def resolve(self, keys: list[str]) -> list:
        """Insert the current index after every array-of-tables prefix (``[[a]]`` then ``[a.b]``)."""
        out: list = []
        for k in keys:
            out.append(k)
            n = self.aot.get(tuple(out))
            if n:
                out.append(n - 1)
        return out

    def record(self, path: Path) -> None:
        if path not in self.locs:
            self.locs[path] = self.line()
            if self.wanted is not None:
                self.wanted.discard(path)
                if not self.wanted:
                    raise _Done

    def scalar(self) -> None:
        c = self.peek()
        if c in ("'", '"'):
            self.string()
            return
        m = _SCALAR.match(self.s, self.i)
        self.i = m.end() if m else self.i + 1  # always move on

    # -- structure -------------------------------------------------------------------------
    def value(self, path: Path) -> None:
        """One value at ``path``; arrays and inline tables with an explicit stack, not recursion."""
        s = self.s
        stack: list[list] = []  # [kind "a" | "t", path, next index]
        cur = path
        while True:
            self.ws(bool(stack))
            c = self.peek()
            if c == "[":
                self.i += 1
                stack.append(["a", cur, 0])
            elif c == "{":
                self.i += 1
                stack.append(["t", cur, 0])
            else:
                self.scalar()
            # Find the next slot for a value, closing finished containers on the way.
            while True:
                if not stack:
                    return
                frame = stack[-1]
                self.i = _SEP.match(s, self.i).end()
                c = s[self.i] if self.i < self.n else ""
                if c == "" or c == ("]" if frame[0] == "a" else "}"):
                    self.i += 1
                    stack.pop()
                    continue
                if frame[0] == "a":
                    cur = frame[1] + (frame[2],)
                    frame[2] += 1
                    self.record(cur)
                    if c not in "[{":
                        self.scalar()  # the common case, without a round through the outer loop
                        continue
                    break
                start = self.i
                keys = self.key()
                for k in range(1, len(keys) + 1):
                    self.record(frame[1] + tuple(keys[:k]))
                cur = frame[1] + tuple(keys)
                self.ws(False)
                if self.peek() == "=":
                    self.i += 1
                elif self.i == start:
                    self.i += 1  # not a key: never loop in place
                break

    def run(self) -> dict[Path, int]:
        current: tuple = ()
        while True:
            self.ws(True)
            if self.i >= self.n:
                return self.locs
            start = self.i
            if self.s.startswith("[[", self.i):
                self.i += 2
                keys = self.key()
                self.i += 2
                parent = tuple(self.resolve(keys[:-1]))
                base = parent + (keys[-1],)
                self.record(base)
                k = self.aot.get(base, 0)
                self.aot[base] = k + 1
                current = base + (k,)
                for j in range(1, len(current) + 1):
                    self.record(current[:j])
                continue
            if self.peek() == "[":
                self.i += 1
                keys = self.key()
                self.i += 1
                current = tuple(self.resolve(keys))
                for j in range(1, len(current) + 1):
                    self.record(current[:j])
                continue
            keys = self.key()
            for j in range(1, len(keys) + 1):
                self.record(current + tuple(keys[:j]))
            self.ws(False)
            if self.peek() == "=":
                self.i += 1
                self.value(current + tuple(keys))
            if self.i == start:
                self.i += 1  # not TOML we understand: move on rather than loop


def key_lines(text: str, wanted: set | None = None) -> dict[Path, int]:
    """Map every key path (and array element path) in a valid TOML text to its 1-based line.

    With ``wanted`` (paths), the scan may stop as soon as each of them has been seen.
    """
    scanner = _Scanner(text, set(wanted) if wanted is not None else None)
    try:
        return scanner.run()
    except _Done:
        return scanner.locs
    except Exception:  # noqa: BLE001 - positions are a courtesy; never let them break validation
        return {}


def line_of(locs: dict[Path, int], path: Path) -> int | None:
    """The line of ``path``, or of its nearest ancestor that has one."""
    p = tuple(path)
    while p:
        if p in locs:
            return locs[p]
        p = p[:-1]
    return None
