"""Line numbers for TOML key paths.

tomllib/tomli give values but no positions, and every Devfile problem must name its line.
This scanner runs over text that tomli has already accepted, so it only needs to follow the
structure (tables, arrays of tables, keys, arrays, inline tables, strings) and never reports
syntax errors itself.
"""

from __future__ import annotations

Path = tuple  # tuple[str | int, ...]

_BARE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.locs: dict[Path, int] = {}
        self.aot: dict[Path, int] = {}  # array-of-tables path -> number of elements so far

    # -- low level -------------------------------------------------------------------------
    def peek(self, n: int = 0) -> str:
        j = self.i + n
        return self.s[j] if j < len(self.s) else ""

    def advance(self, n: int = 1) -> None:
        for _ in range(n):
            if self.i < len(self.s):
                if self.s[self.i] == "\n":
                    self.line += 1
                self.i += 1

    def skip_ws(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.advance()
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                break

    def string(self) -> str:
        quote = self.peek()
        if self.s.startswith(quote * 3, self.i):
            self.advance(3)
            start = self.i
            while self.i < len(self.s) and not self.s.startswith(quote * 3, self.i):
                if quote == '"' and self.peek() == "\\":
                    self.advance()
                self.advance()
            value = self.s[start : self.i]
            self.advance(3)
            # A multi-line string may end with up to two extra quote characters.
            while self.peek() == quote:
                self.advance()
            return value
        self.advance()
        out = []
        while self.i < len(self.s) and self.peek() != quote and self.peek() != "\n":
            if quote == '"' and self.peek() == "\\":
                out.append(self.peek(1))
                self.advance(2)
                continue
            out.append(self.peek())
            self.advance()
        self.advance()
        return "".join(out)

    def key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip_ws(False)
            if self.peek() in "\"'":
                parts.append(self.string())
            else:
                start = self.i
                while self.peek() and self.peek() in _BARE:
                    self.advance()
                parts.append(self.s[start : self.i])
            self.skip_ws(False)
            if self.peek() == ".":
                self.advance()
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
        self.locs.setdefault(path, self.line)

    # -- structure -------------------------------------------------------------------------
    def value(self, path: Path) -> None:
        self.skip_ws(False)
        c = self.peek()
        if c in "\"'":
            self.string()
        elif c == "[":
            self.advance()
            idx = 0
            while True:
                self.skip_ws(True)
                if self.peek() in ("]", ""):
                    self.advance()
                    return
                self.record(path + (idx,))
                self.value(path + (idx,))
                self.skip_ws(True)
                if self.peek() == ",":
                    self.advance()
                idx += 1
        elif c == "{":
            self.advance()
            while True:
                self.skip_ws(True)
                if self.peek() in ("}", ""):
                    self.advance()
                    return
                keys = self.key()
                sub = path + tuple(keys)
                for n in range(1, len(keys) + 1):
                    self.record(path + tuple(keys[:n]))
                self.skip_ws(False)
                self.advance()  # '='
                self.value(sub)
                self.skip_ws(True)
                if self.peek() == ",":
                    self.advance()
        else:
            while self.peek() and self.peek() not in ",]}\n#":
                self.advance()

    def run(self) -> dict[Path, int]:
        current: tuple = ()
        while True:
            self.skip_ws(True)
            if self.i >= len(self.s):
                return self.locs
            if self.peek() == "[":
                if self.peek(1) == "[":
                    self.advance(2)
                    keys = self.key()
                    self.advance(2)
                    parent = tuple(self.resolve(keys[:-1]))
                    base = parent + (keys[-1],)
                    self.record(base)
                    n = self.aot.get(base, 0)
                    self.aot[base] = n + 1
                    current = base + (n,)
                else:
                    self.advance()
                    keys = self.key()
                    self.advance()
                    current = tuple(self.resolve(keys))
                for n in range(1, len(current) + 1):
                    self.record(current[:n])
                continue
            keys = self.key()
            for n in range(1, len(keys) + 1):
                self.record(current + tuple(keys[:n]))
            self.skip_ws(False)
            self.advance()  # '='
            self.value(current + tuple(keys))


def key_lines(text: str) -> dict[Path, int]:
    """Map every key path (and array element path) in a valid TOML text to its 1-based line."""
    try:
        return _Scanner(text).run()
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
