"""Unit tests for devenv.boxes.rootfs: apt source parsing, the busybox root fs and make_tar."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from devenv.boxes import rootfs
from devenv.errors import BoxError

# Reserved names (RFC 2606/6761): these tests must never point at a real mirror.
ARCHIVE = "http://archive.example.test/debian"
SECURITY = "http://archive.example.test/debian-security"
OTHER = "https://repo.example.test/apt"


def _apt_root(tmp_path: Path, sources_list: str | None = None, **parts: str) -> Path:
    apt = tmp_path / "etc" / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    if sources_list is not None:
        (apt / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (apt / "sources.list.d" / name.replace("__", ".")).write_text(text)
    return tmp_path


# --------------------------------------------------------------------------- host_debian_mirror


def test_one_line_sources_list(tmp_path: Path) -> None:
    root = _apt_root(
        tmp_path,
        "# deb http://old.example.test/debian buster main\n"
        f"deb-src {ARCHIVE} bookworm main\n"
        f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {SECURITY} bookworm-security main\n"
        f"deb [ arch=amd64 ] {ARCHIVE} bookworm main contrib  # trailing comment\n",
    )
    assert rootfs.host_debian_mirror(root) == ARCHIVE


def test_deb822_skips_security_block_first(tmp_path: Path) -> None:
    root = _apt_root(
        tmp_path,
        debian__sources=(
            "# Security first, to check it is skipped\n"
            "Types: deb\n"
            f"URIs: {SECURITY}\n"
            "Suites: bookworm-security\n"
            "Components: main\n"
            "\n"
            "Types: deb-src\n"
            f"URIs: {ARCHIVE}-src\n"
            "Suites: bookworm\n"
            "\n"
            "Types: deb\n"
            "# a comment inside the stanza does not end it\n"
            f"URIs: {ARCHIVE}\n"
            "Suites: bookworm bookworm-updates\n"
            "Components: main\n"
        ),
    )
    assert rootfs.host_debian_mirror(root) == ARCHIVE


def test_deb822_suite_security_on_plain_archive_uri(tmp_path: Path) -> None:
    root = _apt_root(
        tmp_path,
        debian__sources=(
            f"Types: deb\nURIs: {ARCHIVE}\nSuites: bookworm-security\n\n"
            f"Types: deb\nEnabled: no\nURIs: {ARCHIVE}-disabled\nSuites: bookworm\n\n"
            f"Types: deb deb-src\nURIs: {ARCHIVE}-two\nSuites: bookworm\n"
        ),
    )
    assert rootfs.host_debian_mirror(root) == f"{ARCHIVE}-two"


def test_sources_list_comes_before_drop_ins(tmp_path: Path) -> None:
    root = _apt_root(
        tmp_path,
        f"deb {ARCHIVE}-main bookworm main\n",
        a__sources=f"Types: deb\nURIs: {ARCHIVE}-dropin\nSuites: bookworm\n",
    )
    assert rootfs.host_debian_mirror(root) == f"{ARCHIVE}-main"


def test_archive_preferred_over_third_party_listed_first(tmp_path: Path) -> None:
    root = _apt_root(
        tmp_path,
        a_vendor__list=f"deb [signed-by=/etc/apt/keyrings/vendor.gpg] {OTHER} stable main\n",
        debian__sources=f"Types: deb\nURIs: {ARCHIVE}\nSuites: bookworm\n",
    )
    assert rootfs.host_debian_mirror(root) == ARCHIVE


def test_third_party_only_is_still_an_answer(tmp_path: Path) -> None:
    root = _apt_root(tmp_path, f"deb {OTHER} stable main\n")
    assert rootfs.host_debian_mirror(root) == OTHER


def test_no_sources_raises(tmp_path: Path) -> None:
    with pytest.raises(BoxError) as info:
        rootfs.host_debian_mirror(tmp_path)
    assert "mirror" in (info.value.hint or "")


def test_only_comments_security_and_disabled_files_raise(tmp_path: Path) -> None:
    root = _apt_root(
        tmp_path,
        f"# deb {ARCHIVE} bookworm main\n\n",
        security__list=f"deb {SECURITY} bookworm-security main\n",
        vendor__list__disabled=f"deb {ARCHIVE} bookworm main\n",
        cdrom__list="deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n",
    )
    with pytest.raises(BoxError):
        rootfs.host_debian_mirror(root)


# --------------------------------------------------------------------------- busybox


def test_busybox_rootfs(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    rootfs.build_busybox_rootfs(dest)

    sh = dest / "bin" / "sh"
    assert sh.is_symlink()
    assert os.readlink(sh) == "busybox"
    assert sh.resolve() == (dest / "bin" / "busybox").resolve()
    out = subprocess.run([str(dest / "bin" / "busybox"), "echo", "hi"], capture_output=True, text=True, check=True)
    assert out.stdout == "hi\n"

    assert (dest / "etc" / "passwd").read_text() == "root:x:0:0:root:/root:/bin/sh\n"
    assert (dest / "etc" / "group").is_file()
    assert (dest / "etc" / "hostname").is_file()
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    for sub in ("sbin", "root", "dev", "proc", "sys", "var", "usr/bin"):
        assert (dest / sub).is_dir(), sub


def test_busybox_rootfs_refuses_non_empty_dest(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(BoxError):
        rootfs.build_busybox_rootfs(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_busybox_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rootfs.shutil, "which", lambda name: None)
    monkeypatch.setattr(rootfs, "BUSYBOX_FALLBACK", tmp_path / "no-busybox")
    with pytest.raises(BoxError) as info:
        rootfs.build_busybox_rootfs(tmp_path / "rootfs")
    assert info.value.hint == "apt-get install busybox-static"
    assert not (tmp_path / "rootfs").exists()


def test_busybox_dynamic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The venv's Python is a dynamically linked ELF: it stands in for a non-static busybox.
    monkeypatch.setattr(rootfs.shutil, "which", lambda name: sys.executable)
    with pytest.raises(BoxError) as info:
        rootfs.build_busybox_rootfs(tmp_path / "rootfs")
    assert "dynamically linked" in str(info.value)
    assert info.value.hint == "apt-get install busybox-static"


def test_elf_static_check() -> None:
    busybox = rootfs._find_static_busybox()
    assert rootfs._elf_is_static(busybox)
    # The Python interpreter of this venv is always dynamically linked.
    python = Path(os.path.realpath(sys.executable))
    assert not rootfs._elf_is_static(python)
    assert not rootfs._elf_is_static(Path(__file__))  # not an ELF at all


# --------------------------------------------------------------------------- make_tar


def test_make_tar(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    rootfs.build_busybox_rootfs(dest)
    out = tmp_path / "rootfs.tar"
    rootfs.make_tar(dest, out)

    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "./bin/busybox" in members
    assert members["./bin/sh"].issym()
    assert members["./bin/sh"].linkname == "busybox"
    assert stat.S_IMODE(members["./tmp"].mode) == 0o1777
    assert all(name == "." or name.startswith("./") for name in members)


def test_make_tar_refuses_out_inside_src(tmp_path: Path) -> None:
    with pytest.raises(BoxError):
        rootfs.make_tar(tmp_path, tmp_path / "self.tar")


# --------------------------------------------------------------------------- debootstrap checks


def test_debootstrap_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 1000)
    with pytest.raises(BoxError) as info:
        rootfs.build_debootstrap_rootfs(tmp_path / "rootfs", suite="bookworm", mirror=ARCHIVE)
    assert "Docker image" in (info.value.hint or "")
    assert not (tmp_path / "rootfs").exists()


def test_debootstrap_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(rootfs.shutil, "which", lambda name: None)
    with pytest.raises(BoxError) as info:
        rootfs.build_debootstrap_rootfs(tmp_path / "rootfs", suite="bookworm", mirror=ARCHIVE)
    assert info.value.hint == "apt-get install debootstrap"


def test_debootstrap_failure_keeps_tail_and_removes_dest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in debootstrap that prints 20 lines, leaves a file behind and fails.
    fake = tmp_path / "debootstrap"
    fake.write_text(
        '#!/bin/sh\nfor i in $(seq 1 20); do echo "line $i"; done\n'
        'for a; do target=$prev; prev=$a; done\ntouch "$target/half-made"\nexit 3\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(rootfs.shutil, "which", lambda name: str(fake) if name == "debootstrap" else None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    seen: list[str] = []
    dest = tmp_path / "rootfs"
    with pytest.raises(BoxError) as info:
        rootfs.build_debootstrap_rootfs(
            dest, suite="bookworm", mirror=ARCHIVE, include=["ca-certificates"], on_output=seen.append
        )
    assert seen == [f"line {i}" for i in range(1, 21)]
    message = str(info.value)
    assert "exit 3" in message
    assert "line 20" in message and "line 6" in message and "line 5\n" not in message
    assert not dest.exists()
    assert (tmp_path / "cache" / "devenv" / "debootstrap").is_dir()


def test_debootstrap_rejects_bad_include(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(rootfs.shutil, "which", lambda name: "/usr/sbin/debootstrap")
    with pytest.raises(BoxError):
        rootfs.build_debootstrap_rootfs(tmp_path / "r", suite="bookworm", mirror=ARCHIVE, include=["a,b"])
