"""Masking gaps (round 2, slice G item 4).

(a) A from_env secret holding bytes that are not UTF-8 (os.environ keeps them as lone
    surrogates) is echoed by the machine as those bytes and decoded back with U+FFFD (or nothing,
    or \\xNN): every such read-back form is masked.
(b) Text cut before it is masked shows the head (or tail) of a secret the cut falls inside: every
    cut of tool/engine output masks first (ui.head / ui.tail), vagrant's error trimming included,
    and the libvirt console tail drops the partial line its byte cut makes.

Real code paths: the Devfile's env read by the project (resolve_env), a real /bin/sh echoing the
value, devenv's own output decoder (LineSplitter, used by every transport), ui.clean (every line
out), vagrant's trim_vagrant_error, the libvirt driver's console_tail on a real log file.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devenv.cli import ui
from devenv.contract import LineSplitter

# Lower-case hex only: the filler below never contains a piece of it by chance.
SECRET = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
FILLER = "xyzw-XYZW "


@pytest.fixture(autouse=True)
def _own_secrets(private_secrets):
    """Each test registers its own secrets (tests/unit/conftest.py)."""


def _no_piece(text: str, secret: str, n: int = 6) -> bool:
    """No run of ``n`` characters of ``secret`` appears in ``text``."""
    return not any(secret[i : i + n] in text for i in range(len(secret) - n + 1))


# -- (a) undecodable bytes -----------------------------------------------------------------------


def _secret_from_host_env(tmp_path: Path, monkeypatch, raw: bytes) -> str:
    """The value devenv reads for a Devfile `from_env` secret whose host variable holds ``raw``."""
    from devenv.core.project import resolve_env
    from devenv.model import devfile

    monkeypatch.setenv("TOKEN", os.fsdecode(raw))
    root = tmp_path / "proj"
    root.mkdir()
    (root / "Devfile").write_text(
        textwrap.dedent(
            """
            [project]
            name = "p"
            [machines.dev]
            driver = "docker"
            box = "docker:busybox"
            env = { TOKEN = { from_env = "TOKEN" } }
            """
        )
    )
    df = devfile.load(root / "Devfile")
    return resolve_env(df.machines["dev"], root)["TOKEN"]


def _echoed_by_a_machine(value: str, decode) -> list[str]:
    """``value`` sent to a real shell as its bytes, its echo read back through ``decode``."""
    env = {**os.environ, "TOKEN": value}
    out = subprocess.run(
        ["/bin/sh", "-c", 'printf "echo from the machine: %s\\n" "$TOKEN"; printf "%s" "$TOKEN" >&2'],
        env=env,
        capture_output=True,
    )
    return decode(out.stdout) + decode(out.stderr)


def _line_splitter(data: bytes) -> list[str]:
    lines: list[str] = []
    s = LineSplitter(lines.append)
    s.feed(data)
    s.close()
    return lines


@pytest.mark.parametrize(
    "raw",
    [
        b"hunter2-very-secret-\xff-tail",
        b"\xfe\xffhunter2-very-secret",
        b"hunter2-very-secret\xc3",  # a cut UTF-8 sequence at the end
        b"hunter2-\xed\xa0\x80-very-secret",  # an encoded surrogate (invalid UTF-8)
        b"hunter2-\x80\x81\x82-very-\xf0\x9f-secret",
    ],
)
@pytest.mark.parametrize(
    "decode",
    [
        _line_splitter,
        lambda b: b.decode("utf-8", "replace").splitlines(),
        lambda b: b.decode("utf-8", "ignore").splitlines(),
        lambda b: b.decode("utf-8", "backslashreplace").splitlines(),
        lambda b: b.decode("utf-8", "surrogateescape").splitlines(),
    ],
    ids=["line-splitter", "replace", "ignore", "backslashreplace", "surrogateescape"],
)
def test_a_from_env_secret_with_undecodable_bytes_is_masked_as_it_reads_back(tmp_path, monkeypatch, raw, decode):
    value = _secret_from_host_env(tmp_path, monkeypatch, raw)
    assert value.encode("utf-8", "surrogateescape") == raw  # what the host variable really holds
    for line in _echoed_by_a_machine(value, decode):
        shown = ui.clean(line)
        assert "hunter2" not in shown and "very-secret" not in shown, (line, shown)


def test_the_undecodable_secret_is_masked_in_repr_and_escaped_forms(tmp_path, monkeypatch):
    value = _secret_from_host_env(tmp_path, monkeypatch, b"hunter2-very-secret-\xff-tail")
    for text in (repr(value), ascii(value), ui.escape(value), f"TOKEN={value}"):
        assert "very-secret" not in ui.clean(text)


# -- (b) cut before masked -----------------------------------------------------------------------


def test_vagrant_error_lines_cut_inside_a_secret_show_no_part_of_it():
    """The reproduction: a 160-character cut falling inside a secret."""
    from devenv.drivers.vagrant.driver import trim_vagrant_error

    secret = "s3cr3t-" + "Z" * 30
    ui.add_secret(secret)
    line = "Message: docker run failed: " + "x" * 100 + " TOKEN=" + secret
    shown = [ui.clean(x) for x in trim_vagrant_error(line)]
    assert all("s3cr3t" not in x and "ZZZZ" not in x for x in shown), shown


@settings(max_examples=150, deadline=None)
@given(before=st.integers(0, 400), after=st.integers(0, 400))
def test_every_vagrant_cut_position_masks_first(before, after):
    from devenv.drivers.vagrant.driver import trim_vagrant_error

    ui.add_secret(SECRET)
    line = "Message: failed " + (FILLER * 50)[:before] + SECRET + (FILLER * 50)[:after]
    for x in trim_vagrant_error(line):
        assert _no_piece(ui.clean(x), SECRET), x


@settings(max_examples=200, deadline=None)
@given(before=st.integers(0, 300), after=st.integers(0, 300), limit=st.integers(1, 400))
def test_head_and_tail_never_show_a_piece_of_a_secret(before, after, limit):
    ui.add_secret(SECRET)
    text = (FILLER * 40)[:before] + SECRET + (FILLER * 40)[:after]
    assert _no_piece(ui.head(text, limit), SECRET)
    assert _no_piece(ui.tail(text, limit), SECRET)
    assert len(ui.head(text, limit)) <= max(limit, 3) and len(ui.tail(text, limit)) <= limit


@pytest.mark.parametrize("pad", [0, 5, 17, 31])
def test_a_host_tools_stderr_cut_to_its_tail_is_masked_before_the_cut(pad):
    """vmbox/biosdisk/rootfs/rsync errors keep the last N characters of the tool's stderr."""
    from devenv.boxes.builders import libvirt as vmbox
    from devenv.errors import BoxError

    ui.add_secret(SECRET)
    # The secret first, then enough that the 800-character tail cut falls `pad` characters into it.
    rest = 800 - (len(SECRET) - pad)
    script = f"printf '%s' '{SECRET}' >&2; head -c {rest} /dev/zero | tr '\\0' y >&2; exit 3"
    with pytest.raises(BoxError) as exc:
        vmbox._run(["/bin/sh", "-c", script], "a tool")
    assert _no_piece(ui.clean(exc.value.message), SECRET), exc.value.message


@pytest.mark.parametrize("cut", [1, 5, 16, 31])
def test_the_libvirt_console_tail_drops_the_line_its_byte_cut_falls_in(tmp_path, monkeypatch, cut):
    from devenv.drivers.libvirt.driver import LibvirtDriver

    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "home"))
    d = LibvirtDriver()
    log = d.storage_dir("dom") / "console.log"
    log.parent.mkdir(parents=True)
    ui.add_secret(SECRET)
    # The last 8192 bytes start `cut` characters into the secret the guest printed.
    after = "\n" + ("y" * 99 + "\n") * 81
    body = SECRET[cut:] + after
    head = "z" * 3000 + "\nboot: TOKEN=" + SECRET[:cut]
    assert len(body.encode()) <= 8192 < len((head + body).encode())
    log.write_bytes((head + body + "w" * (8192 - len(body.encode()))).encode())
    shown = ui.clean(d.console_tail("qemu:///system#dom", lines=500))
    assert _no_piece(shown, SECRET), shown[:200]
    assert "w" * 10 in shown  # the tail is still shown


def test_a_corrupt_state_value_quoted_in_an_error_is_masked_before_its_60_character_cut():
    from devenv.state import check_machine_state

    ui.add_secret(SECRET)
    for lead in range(20, 60):
        why = check_machine_state({"handle": ["y" * lead + SECRET]})
        assert why is not None and _no_piece(ui.clean(why), SECRET), why
