"""Unit tests for devenv.model.tomlpos: the line of every key path in a TOML text."""

from __future__ import annotations

import textwrap
import tomllib

import pytest

from devenv.model.tomlpos import key_lines, line_of


def lines(text: str) -> dict:
    text = textwrap.dedent(text).lstrip("\n")
    tomllib.loads(text)  # the scanner only ever sees text tomllib accepted
    return key_lines(text)


def test_tables_keys_and_dotted_keys() -> None:
    locs = lines(
        """
        # a comment with [brackets] and = signs
        [project]
        name = "demo"

        [machines.web]   # trailing comment [x]
        box = "busybox"
        env.APP = "1"
        docker . privileged = true
        """
    )
    assert locs == {
        ("project",): 2,
        ("project", "name"): 3,
        ("machines",): 5,
        ("machines", "web"): 5,
        ("machines", "web", "box"): 6,
        ("machines", "web", "env"): 7,
        ("machines", "web", "env", "APP"): 7,
        ("machines", "web", "docker"): 8,
        ("machines", "web", "docker", "privileged"): 8,
    }


def test_quoted_keys() -> None:
    locs = lines(
        """
        [machines."a.b"]
        'literal.key' = 1
        "esc\\"aped" = 2
        [ "q" . r ]
        k = 3
        """
    )
    assert locs[("machines", "a.b")] == 1
    assert locs[("machines", "a.b", "literal.key")] == 2
    assert locs[("machines", "a.b", 'esc"aped')] == 3
    assert locs[("q", "r")] == 4
    assert locs[("q", "r", "k")] == 5


def test_arrays_and_inline_tables() -> None:
    locs = lines(
        """
        [machines.web]
        ports = [
          "80:80",   # comment, with ] and }
          { guest = 1, host = 2 },

          [1,
           2],
        ]
        nested = { a = { b = [1, { c = 2 }] } }
        empty = []
        none = {}
        after = 1
        """
    )
    m = ("machines", "web")
    assert locs[m + ("ports",)] == 2
    assert locs[m + ("ports", 0)] == 3
    assert locs[m + ("ports", 1)] == 4
    assert locs[m + ("ports", 1, "guest")] == 4
    assert locs[m + ("ports", 1, "host")] == 4
    assert locs[m + ("ports", 2)] == 6
    assert locs[m + ("ports", 2, 1)] == 7
    assert locs[m + ("nested", "a", "b", 1, "c")] == 9
    assert locs[m + ("empty",)] == 10
    assert locs[m + ("none",)] == 11
    assert locs[m + ("after",)] == 12
    assert (m + ("ports", 3)) not in locs


def test_strings_that_look_like_structure() -> None:
    locs = lines(
        '''
        [a]
        script = """
        [not.a.table]
        x = 1
        """
        lit = \'\'\'one
        [two]\'\'\'
        esc = "quote \\" [x] # not a comment"
        path = 'C:\\dir\\'
        ml = """a\\
          b\\"""" # c
        hash = "#"
        z = 2
        '''
    )
    assert ("not", "a", "table") not in locs and ("a", "x") not in locs and ("two",) not in locs
    assert locs[("a", "script")] == 2
    assert locs[("a", "lit")] == 6
    assert locs[("a", "esc")] == 8
    assert locs[("a", "path")] == 9
    assert locs[("a", "ml")] == 10
    assert locs[("a", "hash")] == 12
    assert locs[("a", "z")] == 13


def test_other_values() -> None:
    locs = lines(
        """
        a = 1979-05-27 07:32:00Z
        b = -inf
        c = 1_000
        d = [0x1F, 1e+5, true]
        e = 2
        """
    )
    assert [locs[(k,)] for k in "abcde"] == [1, 2, 3, 4, 5]
    assert locs[("d", 2)] == 4


def test_arrays_of_tables_get_indices() -> None:
    locs = lines(
        """
        [machines.a]
        box = "busybox"

        [[machines.a.provision]]
        type = "shell"

        [[machines.a.provision]]
        type = "file"
        [machines.a.provision.x]
        y = 1

        [[machines.b.provision]]
        type = "shell"
        """
    )
    p = ("machines", "a", "provision")
    assert locs[p] == 4
    assert locs[p + (0,)] == 4
    assert locs[p + (0, "type")] == 5
    assert locs[p + (1,)] == 7
    assert locs[p + (1, "type")] == 8
    assert locs[p + (1, "x")] == 9
    assert locs[p + (1, "x", "y")] == 10
    assert locs[("machines", "b", "provision", 0, "type")] == 13


def test_first_mention_wins() -> None:
    locs = lines(
        """
        [machines.a]
        box = "busybox"
        [machines.b]
        box = "busybox"
        """
    )
    assert locs[("machines",)] == 1
    assert locs[("machines", "b")] == 3


def test_crlf_line_endings() -> None:
    text = '[machines.a]\r\nbox = "busybox"\r\n\r\ncpus = 1\r\n'
    tomllib.loads(text)
    assert key_lines(text)[("machines", "a", "cpus")] == 4


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("machines", "a", "box"), 2),
        (("machines", "a", "memory"), 1),  # not written: the table's line
        (("machines", "a", "ports", 1, "host"), 3),  # inside an element: the element's line
        (("machines", "a", "ports", 7), 3),  # no such element: the array's line
        (("machines", "z"), 1),
        (("nowhere",), None),
        ((), None),
    ],
)
def test_line_of_falls_back_to_the_nearest_ancestor(path: tuple, line: int | None) -> None:
    locs = lines(
        """
        [machines.a]
        box = "busybox"
        ports = ["1:1", { guest = 2 }]
        """
    )
    assert line_of(locs, path) == line


def test_key_lines_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from devenv.model import tomlpos

    def boom(self):
        raise IndexError("scanner bug")

    monkeypatch.setattr(tomlpos._Scanner, "run", boom)
    assert key_lines("a = 1") == {}


def test_empty_text() -> None:
    assert key_lines("") == {}
    assert key_lines("# only a comment\n\n") == {}
