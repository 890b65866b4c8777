"""What reaches the terminal (issue #10 items 10 and 14): secrets masked in every form and on every
path out (errors, problems, progress, the --debug traceback), terminal controls escaped.

Each case writes its own crafted input and goes through the real renderer (devenv.cli.ui via the
real CLI or its error handler), never a re-implementation of it.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
import typer
from typer.testing import CliRunner

from devenv.cli import app as cli
from devenv.cli import common, ui
from devenv.errors import CommandFailed, ProvisionError

# Characters that act on a terminal and must never be printed raw.
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(autouse=True)
def _own_secrets(private_secrets):
    """Each test registers its own secrets (tests/unit/conftest.py)."""


def _go_quoted(value: str) -> str:
    # Written out by hand for the values below (not with devenv's own helper): Go's %q body.
    return value.encode("unicode_escape").decode().replace('"', '\\"')


NASTY = [
    "nul\x00inside-secret",
    "multi\nline\nsecret-value",
    "a.*b+(c)[d]?$^|\\regex-meta",
    "quotes'and\"both",
    "ünïcødé-sëcret\u202e",
    "tab\tand\rcr-secret",
]


@pytest.mark.parametrize("secret", NASTY)
def test_every_form_of_a_secret_is_masked(secret, capsys):
    ui.add_secret(secret)
    forms = {
        "raw": secret,
        "json": json.dumps(secret)[1:-1],
        "json-utf8": json.dumps(secret, ensure_ascii=False)[1:-1],
        "repr": repr(secret),
        "shell": shlex.quote(secret),
        "go": _go_quoted(secret),
    }
    for name, form in forms.items():
        ui.error(f'engine said: invalid env "K={form}" ({name})')
    err = capsys.readouterr().err
    assert err.count("***") >= len(forms), err
    for form in forms.values():
        assert form not in err
    # Printed in pieces (line by line, or cut at a NUL by C code): every long piece is masked too.
    for piece in re.split(r"[\x00-\x1f]+", secret):
        if len(piece) >= getattr(ui, "MIN_SECRET", 3):
            assert piece not in err, piece
    assert not RAW_CONTROLS.search(err), err


def test_a_multiline_secret_printed_line_by_line_is_masked(capsys):
    secret = "-----BEGIN KEY-----\nAAAAsecretbody\n-----END KEY-----"
    ui.add_secret(secret)
    for line in secret.split("\n"):
        ui.detail("web", line)  # how a step's output arrives: one line at a time
    err = capsys.readouterr().err
    assert "AAAAsecretbody" not in err and "BEGIN KEY" not in err


def test_short_secrets_are_masked_on_their_own_not_inside_words(capsys):
    ui.add_secret("ab")
    ui.say("ab")
    ui.say("  ab  ")
    ui.say("about a cab")
    out = capsys.readouterr().out.splitlines()
    assert out == ["***", "***", "about a cab"]


def test_every_line_out_is_escaped_and_newlines_and_tabs_stay(capsys):
    evil = "x\x1b]0;pwned-title\x07 \x1b[2J\x1b[H cleared \u202eevil\u202c \x9b31m \r\x00 end"
    ui.error(evil, "hint " + evil)
    ui.warn(evil)
    ui.info(evil, evil)
    ui.detail(evil, evil)
    ui.say(evil)
    ui.say("two\nlines\tand a tab")
    captured = capsys.readouterr()
    for text in (captured.out, captured.err):
        assert not RAW_CONTROLS.search(text), repr(text)
    assert "\\x1b]0;pwned-title\\x07" in captured.err and "\\u202e" in captured.err
    assert "two\nlines\tand a tab" in captured.out


def _devfile_with_controls(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    # A key and a value that carry terminal controls (TOML escapes make them real characters).
    (root / "Devfile").write_text(
        '[machines.a]\ndriver = "docker"\nbox = "busybox"\n'
        '"evil\\u001b]0;title\\u0007\\u001b[2J\\u202e" = 1\n'
        'hostname = "bad\\u001b[31m\\u2066name"\n'
    )
    return root / "Devfile"


def test_validate_escapes_what_the_devfile_quotes(tmp_path):
    path = _devfile_with_controls(tmp_path)
    r = CliRunner().invoke(cli.app_for(["validate"]), ["-f", str(path), "validate"])
    assert r.exit_code == 2, r.output
    assert "evil" in r.output and "\\x1b" in r.output
    assert not RAW_CONTROLS.search(r.output), repr(r.output)


def test_validate_json_stays_valid_json_with_controls(tmp_path):
    path = _devfile_with_controls(tmp_path)
    r = CliRunner().invoke(cli.app_for(["validate"]), ["-f", str(path), "validate", "--json"])
    assert r.exit_code == 2
    doc = json.loads(r.stdout)  # still parses
    assert not doc["valid"] and any("evil\x1b]0;" in p["key"] for p in doc["problems"])
    assert not RAW_CONTROLS.search(r.stdout)


def test_devfile_errors_of_other_commands_are_escaped(tmp_path):
    path = _devfile_with_controls(tmp_path)
    r = CliRunner().invoke(cli.app_for(["up"]), ["-f", str(path), "up"])
    assert r.exit_code == 2, r.output
    assert "evil" in r.output and not RAW_CONTROLS.search(r.output), repr(r.output)


def _app_raising(exc_factory):
    app = typer.Typer()

    @app.command()
    @common.handle_errors
    def boom() -> None:
        raise exc_factory()

    return app


SECRET = "tok-Sup3r$ecret.*(x)"


def _chained_failure() -> ProvisionError:
    try:
        try:
            raise KeyError(SECRET)  # its str() is the repr form
        except KeyError as inner:
            raise RuntimeError(f"context {json.dumps(SECRET)}") from inner
    except RuntimeError as mid:
        exc = ProvisionError(f"step failed\n--- last output ---\nline with {SECRET}\n{shlex.quote(SECRET)}")
        exc.add_note(f"note: {SECRET!r}")
        exc.__cause__ = mid
        return exc


@pytest.mark.parametrize("kind", ["expected", "internal"])
def test_debug_traceback_is_masked_and_escaped(kind):
    ui.add_secret(SECRET)
    ui.configure(debug=True)

    def factory():
        exc = _chained_failure()
        if kind == "internal":
            bug = ValueError(f"bug with {SECRET} and \x1b[2J")
            bug.__cause__ = exc
            return bug
        return exc

    r = CliRunner().invoke(_app_raising(factory), [])
    assert r.exit_code == (5 if kind == "expected" else 1)
    out = r.output
    assert "Traceback" in out and "***" in out and "note:" in out, out
    for form in (SECRET, repr(SECRET), json.dumps(SECRET)[1:-1], shlex.quote(SECRET)):
        assert form not in out
    assert not RAW_CONTROLS.search(out), repr(out)


def test_engine_error_quoting_a_nul_secret_from_file_is_masked(tmp_path, monkeypatch):
    """The secret comes from a file (read as the Project does); the engine quotes it its own way."""
    from devenv.model.devfile import Secret

    value = "db\x00pass\nword-9f"
    (tmp_path / "token").write_bytes(value.encode() + b"\n")
    ui.add_secret(Secret(from_file=str(tmp_path / "token")).read(tmp_path))
    go = "db\\x00pass\\nword-9f"
    app = _app_raising(lambda: CommandFailed(f'Error response from daemon: invalid env "TOKEN={go}" / {value}'))
    r = CliRunner().invoke(app, [])
    assert r.exit_code == 6
    assert "pass" not in r.output and "word-9f" not in r.output, r.output
    assert "invalid env" in r.output and not RAW_CONTROLS.search(r.output)


def test_own_colours_render_but_input_cannot_forge_or_smuggle_them(monkeypatch):
    import io
    import sys

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    out = Tty()
    monkeypatch.setattr(sys, "stdout", out)
    ui.say("state " + ui.style("running", "green") + " box \x1b[2J \ue000" + "32\ue001forged")
    text = out.getvalue()
    assert "\x1b[32mrunning\x1b[0m" in text  # devenv's own colour
    assert "\\x1b[2J" in text and "\x1b[2J" not in text and "\x1b[32mforged" not in text
