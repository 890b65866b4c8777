"""Fuzzing the checked box extraction (devenv/boxarchive.py) and `add_box_file` with hypothesis.

Random archives: member names (absolute, "..", "./", nested, long, control characters, allowed
names), every tar member type (regular, directory, symlink, hard link, char/block device, fifo,
contiguous, an unknown type), link targets pointing anywhere, random sizes and data, random
compressions, and random bytes or truncations of an archive. Whatever comes in: nothing is
written outside the extraction parent, no exception but BoxError escapes, and what was
extracted is only plain files with allow-listed names inside the fresh folder.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devenv.boxes import archive as boxarchive
from devenv.boxes import vagrantbox as boxfile
from devenv.errors import BoxError

ALLOWED = [
    "metadata.json",
    "box.img",
    "box_2.img",
    "Vagrantfile",
    "vmlinuz",
    "initrd.img",
    "devenv.json",
    "info.json",
    "box.ovf",
    "box-disk001.vmdk",
]
NAMES = st.one_of(
    st.sampled_from(ALLOWED),
    st.sampled_from(["./" + n for n in ALLOWED]),
    st.sampled_from(["/etc/passwd", "..", "../x", "../../../../../../tmp/pwn", ".", "./", "", "a/b", "sub/box.img"]),
    st.builds(lambda parts: "/".join(parts), st.lists(st.sampled_from(["..", ".", "a", "box.img", ""]), max_size=6)),
    st.text(min_size=1, max_size=300),
    st.builds(lambda n: "x" * n + ".img", st.integers(90, 400)),
)
TYPES = st.sampled_from(
    [
        tarfile.REGTYPE,
        tarfile.AREGTYPE,
        tarfile.CONTTYPE,
        tarfile.DIRTYPE,
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.FIFOTYPE,
        b"Z",
    ]
)
LINKS = st.one_of(
    st.sampled_from(["/", "/etc/passwd", "..", "../../..", ".", "box.img", "a/" * 50]), st.text(max_size=80)
)
MEMBER = st.tuples(NAMES, TYPES, LINKS, st.binary(max_size=64), st.integers(0, 3))
MODES = st.sampled_from(["w", "w:gz", "w:bz2", "w:xz"])


def _build(members, mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        for name, type_, link, data, _ in members:
            info = tarfile.TarInfo(name)
            info.type = type_
            info.linkname = link
            info.mode = 0o777
            if type_ in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _mangle(data: bytes, how: int, cut: int) -> bytes:
    if how == 1:  # truncated
        return data[: cut % (len(data) + 1)]
    if how == 2:  # a flipped byte
        i = cut % len(data)
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
    return data


def _snapshot(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        out.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return out


def _check(archive_bytes: bytes, fn) -> None:
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        outside = base / "outside"
        parent = outside / "parent"
        parent.mkdir(parents=True)
        (outside / "victim").write_text("victim")
        archive = outside / "fuzz.box"
        archive.write_bytes(archive_bytes)
        before = _snapshot(base)
        try:
            result = fn(archive, parent)
        except BoxError as exc:
            assert exc.message
            result = None
        after = _snapshot(base)
        created = after - before
        # Everything new is inside the extraction parent; nothing outside changed.
        assert all(p.startswith(str(parent) + os.sep) for p in created), sorted(created - set())
        assert (outside / "victim").read_text() == "victim"
        assert before - after == set(), "nothing outside was removed"
        if result is not None:
            folder, names = result
            assert folder.parent == parent
            for n in names:
                p = folder / n
                assert stat.S_ISREG(os.lstat(p).st_mode) and boxarchive.allowed_in_any(n)
            assert sorted(os.listdir(folder)) == sorted(names)
        else:
            assert os.listdir(parent) == [], "a refused archive leaves no folder"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MEMBER, max_size=8), MODES, st.integers(0, 2), st.integers(0, 10**6))
def test_extract_never_writes_outside_and_raises_only_box_errors(members, mode, how, cut):
    data = _mangle(_build(members, mode), how, cut)
    _check(data, lambda archive, parent: boxarchive.extract(archive, parent))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_are_a_box_error(data):
    _check(data, lambda archive, parent: boxarchive.extract(archive, parent))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MEMBER, max_size=6), st.sampled_from(["libvirt", "virtualbox", "x", ""]), MODES)
def test_add_box_file_on_random_archives_raises_only_box_errors(members, provider, mode):
    meta = ("metadata.json", tarfile.REGTYPE, "", f'{{"provider": "{provider}"}}'.encode(), 0)
    data = _build([meta, *members], mode)
    with tempfile.TemporaryDirectory() as home:
        old = os.environ.get("DEVENV_HOME")
        os.environ["DEVENV_HOME"] = home
        try:

            def add(archive: Path, parent: Path):
                boxfile.add_box_file(archive, name="fuzz", version="1")
                return None

            _check(data, add)
            # whatever happened, the store holds no half-unpacked folder
            root = Path(home) / "boxes"
            assert not root.is_dir() or not [p for p in os.listdir(root) if p.startswith(".")]
        finally:
            if old is None:
                os.environ.pop("DEVENV_HOME", None)
            else:
                os.environ["DEVENV_HOME"] = old
