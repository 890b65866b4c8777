"""Copying out of a machine (`Transport.get`): the tar a machine sends is hostile input."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from devenv.errors import CommandFailed
from devenv.transports.files import extract_from_machine


def _tar(*members: tuple[str, str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "chardev": tarfile.CHRTYPE,
            }[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = str(payload)
            tar.addfile(info)
    return buf.getvalue()


def test_a_folder_is_copied_with_its_top_entry_stripped(tmp_path: Path) -> None:
    data = _tar(("out", "dir", b""), ("out/sub", "dir", b""), ("out/sub/a.txt", "file", "hello"))
    extract_from_machine(data, tmp_path / "dest", "web", "/out")
    assert (tmp_path / "dest" / "sub" / "a.txt").read_text() == "hello"


@pytest.mark.parametrize(
    "members",
    [
        [("out", "dir", b""), ("out/link", "symlink", "/etc"), ("out/link/passwd", "file", "pwned")],
        [("out", "dir", b""), ("out/hard", "hardlink", "/etc/passwd")],
        [("out", "dir", b""), ("out/../../escape.txt", "file", "pwned")],
        [("out", "dir", b""), ("/abs/escape.txt", "file", "pwned")],
        [("out", "dir", b""), ("out/fifo", "fifo", b"")],
        [("out", "dir", b""), ("out/dev", "chardev", b"")],
    ],
    ids=["symlink-then-write-through", "hardlink", "dotdot", "absolute", "fifo", "device"],
)
def test_links_devices_and_escapes_are_refused_before_anything_is_written(tmp_path: Path, members) -> None:
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(CommandFailed, match="nothing was copied"):
        extract_from_machine(_tar(*members), dest, "web", "/out")
    assert not dest.exists()
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "a" / "escape.txt").exists()


def test_a_corrupt_archive_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="unreadable archive"):
        extract_from_machine(b"\x00garbage" * 100, tmp_path / "dest", "web", "/out")
