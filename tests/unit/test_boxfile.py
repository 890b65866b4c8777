"""Vagrant .box archives and catalogs: pack, add with checksum verification, refuse mismatches."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from devenv.boxes import store as boxes
from devenv.boxes import vagrantbox as boxfile
from devenv.errors import BoxError
from tests.support import missing


@pytest.fixture
def stored(tmp_path) -> boxes.StoredBox:
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src / "disk.qcow2"), "16M"], check=True)
    (src / "vmlinuz").write_bytes(b"kernel")
    (src / "initrd.img").write_bytes(b"initrd")
    return boxes.store_box(
        "tiny",
        "1",
        "libvirt",
        {"disk": src / "disk.qcow2", "kernel": src / "vmlinuz", "initrd": src / "initrd.img"},
        {"cmdline": "console=ttyS0", "ssh_user": "root", "sync": ["rsync"]},
    )


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_pack_has_vagrant_layout(stored, tmp_path):
    out = boxfile.write_libvirt_box(stored, tmp_path / "tiny.box")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        meta = json.loads(tar.extractfile("metadata.json").read())
        vagrantfile = tar.extractfile("Vagrantfile").read().decode()
    assert {"metadata.json", "Vagrantfile", "box.img", "vmlinuz", "initrd.img"} <= names
    assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": 1}
    assert 'libvirt.cmd_line = "console=ttyS0"' in vagrantfile


def test_add_verifies_checksum_and_refuses_a_mismatch(stored, tmp_path):
    out = boxfile.write_libvirt_box(stored, tmp_path / "tiny.box")
    with pytest.raises(BoxError) as exc:
        boxfile.add_box_file(out, name="copy", version="2", checksum="sha256:" + "0" * 64)
    assert "checksum mismatch" in exc.value.message and "was not added" in exc.value.message
    assert boxes.find_stored("copy", None, "libvirt") is None, "nothing half-added"
    added = boxfile.add_box_file(out, name="copy", version="2", checksum=f"sha256:{_sha(out)}")
    assert added.meta["cmdline"] == "console=ttyS0" and added.file("kernel").read_bytes() == b"kernel"
    assert added.digest() == stored.digest(), "the disk inside is bit-for-bit the packed one"


def test_not_a_box(tmp_path):
    bad = tmp_path / "bad.box"
    bad.write_bytes(b"not a tar")
    with pytest.raises(BoxError, match="not a valid .box archive"):
        boxfile.add_box_file(bad, name="x", version="1")


class _Server:
    """A throw-away HTTP server on 127.0.0.1 serving one folder (optionally lying about lengths)."""

    def __init__(self, root: Path, truncate: bool = False) -> None:
        root_ = root

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(root_), **k)

            def log_message(self, *a):
                pass

            def copyfile(self, source, outputfile):
                if truncate and self.path.endswith(".box"):
                    outputfile.write(source.read(100))  # then the connection ends early
                    return
                shutil.copyfileobj(source, outputfile)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_catalog_over_http_picks_newest_libvirt_version(stored, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    out = boxfile.write_libvirt_box(stored, site / "tiny-3.box")
    (site / "catalog.json").write_text(
        json.dumps(
            {
                "name": "acme/tiny",
                "versions": [
                    {
                        "version": "2",
                        "providers": [
                            {"name": "virtualbox", "url": "nope.box", "checksum_type": "sha256", "checksum": "00"}
                        ],
                    },
                    {
                        "version": "3",
                        "providers": [
                            {"name": "libvirt", "url": "tiny-3.box", "checksum_type": "sha256", "checksum": _sha(out)}
                        ],
                    },
                ],
            }
        )
    )
    srv = _Server(site)
    try:
        added = boxfile.add_from_catalog(f"{srv.url}/catalog.json")
    finally:
        srv.close()
    assert (added.name, added.version, added.provider) == ("acme-tiny", "3", "libvirt")


def test_interrupted_download_leaves_nothing(stored, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    out = boxfile.write_libvirt_box(stored, site / "t.box")
    (site / "catalog.json").write_text(
        json.dumps(
            {
                "name": "t",
                "versions": [
                    {
                        "version": "1",
                        "providers": [
                            {"name": "libvirt", "url": "t.box", "checksum_type": "sha256", "checksum": _sha(out)}
                        ],
                    }
                ],
            }
        )
    )
    srv = _Server(site, truncate=True)
    try:
        with pytest.raises(BoxError) as exc:
            boxfile.add_from_catalog(f"{srv.url}/catalog.json")
    finally:
        srv.close()
    assert "interrupted" in exc.value.message or "checksum mismatch" in exc.value.message
    assert boxes.find_stored("t", None, "libvirt") is None


def test_prune_keeps_newest_and_locked_versions(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from devenv.cli.app import app

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # never touch real images here
    for v in ("1", "2", "3"):
        f = tmp_path / f"d{v}.qcow2"
        f.write_bytes(b"disk" + v.encode())
        boxes.store_box("tiny", v, "libvirt", {"disk": f}, {})
    (tmp_path / "Devfile").write_text('[machines.m]\ndriver = "libvirt"\nbox = "tiny"\n')
    (tmp_path / "Devfile.lock").write_text(
        'version = 1\n[machines.m]\nbox = "tiny"\nversion = "1"\nprovider = "libvirt"\n'
    )
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["box", "prune"])
    assert r.exit_code == 0, r.output
    assert sorted(b.version for b in boxes.list_stored()) == ["1", "3"]


def test_a_full_disk_is_a_clear_error_and_leaves_the_store_consistent(tmp_path, monkeypatch):
    """The box store on a 1 MiB tmpfs: adding a larger box fails cleanly, nothing half-stored."""
    import os

    if os.geteuid() != 0:
        missing("mounting a tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        monkeypatch.setenv("DEVENV_HOME", str(small))
        big = tmp_path / "big.img"
        big.write_bytes(os.urandom(3 * 1024 * 1024))
        with pytest.raises(BoxError) as exc:
            boxes.store_box("big", "1", "libvirt", {"disk": big}, {})
        assert "No space left on device" in exc.value.message and "box prune" in exc.value.hint
        assert boxes.list_stored() == []
        assert [p.name for p in (small / "boxes" / "big" / "1").iterdir()] == [], "no half-written folder left"
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_add_a_virtualbox_box(tmp_path):
    src = tmp_path / "vb"
    src.mkdir()
    (src / "metadata.json").write_text('{"provider": "virtualbox"}')
    (src / "box.ovf").write_text(
        '<Envelope><References><File ovf:id="file1" ovf:href="box-disk001.vmdk"/></References></Envelope>'
    )
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            str(src / "box-disk001.vmdk"),
            "1M",
        ],
        check=True,
    )
    (src / "devenv.json").write_text('{"ssh_user": "root", "guest_additions": true}')
    out = tmp_path / "vb.box"
    with tarfile.open(out, "w") as tar:
        for f in src.iterdir():
            tar.add(f, f.name)
    added = boxfile.add_box_file(out, name="vbtest", version="1", checksum=f"sha256:{_sha(out)}")
    assert added.provider == "virtualbox" and added.file("ovf").name == "box.ovf"
    assert added.file("disk").read_bytes()[:4] == b"KDMV" and added.meta["guest_additions"] is True
    # An OVF naming a disk that is not in the archive is refused.
    (src / "box-disk001.vmdk").unlink()
    bad = tmp_path / "bad.box"
    with tarfile.open(bad, "w") as tar:
        for f in src.iterdir():
            tar.add(f, f.name)
    with pytest.raises(BoxError, match="not in the box: box-disk001.vmdk"):
        boxfile.add_box_file(bad, name="vbbad", version="1")
