"""A stored box version that machines' disks are built on cannot be removed, replaced or pruned.

Real qcow2 files (qemu-img), no libvirt: the overlay sits where the libvirt driver keeps a
machine's disk, backed by the box's disk as `devenv up` makes it.
"""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from devenv.boxes import disks
from devenv.boxes import store as boxes
from devenv.cli.app import app
from devenv.errors import BoxError
from tests.support import require_tool


@pytest.fixture
def store(tmp_path, monkeypatch):
    require_tool("qemu-img", "apt-get install qemu-utils")
    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # prune must not touch real images
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    work.mkdir()

    def add(version: str):
        disk = work / f"disk-{version}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
        return boxes.store_box("tbox", version, "libvirt", {"disk": disk}, {})

    return add


def overlay_for(machine: str, box: boxes.StoredBox):
    from devenv.state import data_dir

    folder = data_dir() / "libvirt" / machine
    folder.mkdir(parents=True)
    overlay = folder / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(box.file("disk")), str(overlay)],
        check=True,
    )
    return overlay


def test_backing_file_is_read_from_the_header(store, tmp_path):
    box = store("1")
    overlay = overlay_for("devenv-p1-web", box)
    assert disks.qcow2_backing(overlay) == str(box.file("disk"))
    assert disks.qcow2_backing(box.file("disk")) is None  # a base image has none
    (tmp_path / "not-qcow2").write_bytes(b"\0" * 64)
    assert disks.qcow2_backing(tmp_path / "not-qcow2") is None
    assert disks.qcow2_backing(tmp_path / "missing") is None


def test_in_use_box_is_neither_removed_nor_replaced(store):
    box = store("1")
    other = store("2")
    overlay = overlay_for("devenv-p1-web", box)
    assert disks.disk_users(box.folder) == ["devenv-p1-web"] and disks.disk_users(other.folder) == []

    with pytest.raises(BoxError, match=r"cannot remove box tbox@1 \(libvirt\): the disks of devenv-p1-web"):
        boxes.remove_stored("tbox", None)
    # Nothing went, not even the unused version named in the same call.
    assert {b.version for b in boxes.list_stored()} == {"1", "2"}
    disk_before = box.file("disk").read_bytes()

    with pytest.raises(BoxError, match="cannot replace box tbox@1"):
        store("1")
    assert box.file("disk").read_bytes() == disk_before  # the machine's base is untouched

    # Through the command line: exit 7, one message with the fix.
    r = CliRunner().invoke(app, ["box", "remove", "tbox@1"])
    assert r.exit_code == 7, r.output
    assert "devenv-p1-web" in r.output and "destroy those machines first" in r.output

    # Once the machine is gone, the version can go.
    overlay.unlink()
    assert boxes.remove_stored("tbox", "1") == ["tbox@1 (libvirt)"]


def test_prune_keeps_a_version_a_machine_is_built_on(store):
    old = store("1")
    store("2")
    store("3")
    overlay_for("devenv-elsewhere-db", old)
    r = CliRunner().invoke(app, ["box", "prune"])
    assert r.exit_code == 0, r.output
    assert "keeping tbox@1 (libvirt): the disks of devenv-elsewhere-db are built on it" in r.output
    assert "removing tbox@2 (libvirt)" in r.output
    assert {b.version for b in boxes.list_stored()} == {"1", "3"}
