"""Box import as hostile input (issue #10 items 1, 2, 3, 9, 16).

Every case builds its own crafted .box archives, catalogs and store layouts, and drives the real
code paths: `devenv box add` / `box remove` through the CLI, boxfile.add_box_file, the store
functions. Downloads go to an http.server on 127.0.0.1 that the test starts and whose requests
it records, so "refused before downloading" is observed, not assumed. The "victim" files live
outside the box store; every attack checks they are unchanged afterwards.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devenv.boxes import store as boxes
from devenv.boxes import vagrantbox as boxfile
from devenv.errors import BoxError
from tests.support import missing

REPO = Path(__file__).resolve().parents[2]


# -- helpers -----------------------------------------------------------------------------------


def _member(name: str, data: bytes = b"", type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple:
    return (name, data, type_, linkname)


def make_tar(path: Path, members: list[tuple], mode: str = "w:gz") -> Path:
    """A tar with exactly these members (name, data, type, linkname), as an attacker would write it."""
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:
        for name, data, type_, linkname in members:
            info = tarfile.TarInfo(name)
            info.type = type_
            info.linkname = linkname
            info.mode = 0o644
            if type_ in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


LIBVIRT_META = _member("metadata.json", b'{"provider": "libvirt", "format": "qcow2", "virtual_size": 1}')


def _real_disk(fmt: str, *opts: str) -> bytes:
    """A real, self-contained disk image made by qemu-img: box disks are checked (test_security_box_disks)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / f"disk.{fmt}"
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *opts, str(out), "1M"], check=True)
        return out.read_bytes()


DISK = _member("box.img", _real_disk("qcow2", "-o", "cluster_size=512"))
VMDK = _real_disk("vmdk", "-o", "subformat=streamOptimized")


def libvirt_box(path: Path, *extra: tuple, mode: str = "w:gz") -> Path:
    return make_tar(path, [LIBVIRT_META, DISK, *extra], mode)


def vbox_box(path: Path, href: str, *, ovf: str | None = None, disk: tuple | None = None) -> Path:
    ovf_text = ovf or textwrap.dedent(
        f"""\
        <?xml version="1.0" encoding="UTF-8"?>
        <Envelope ovf:version="1.0" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
            xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
          <References><File ovf:id="file1" ovf:href="{href}"/></References>
        </Envelope>
        """
    )
    members = [_member("metadata.json", b'{"provider": "virtualbox"}'), _member("box.ovf", ovf_text.encode())]
    members.append(disk or _member("box-disk001.vmdk", VMDK))
    return make_tar(path, members, "w")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root with its type and content digest: what an attack must not change."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                out[str(p)] = ("f", hashlib.sha256(p.read_bytes()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                out[str(p)] = ("l", os.readlink(p))
            else:
                out[str(p)] = ("d",)
    return out


@pytest.fixture
def victim(tmp_path) -> Path:
    """A folder outside the box store with a file in it: what a hostile box wants to take or delete."""
    v = tmp_path / "victim"
    v.mkdir()
    (v / "secret.txt").write_text("do not move me\n")
    (v / "1" / "libvirt").mkdir(parents=True)
    (v / "1" / "libvirt" / "box.json").write_text('{"name": "evil", "files": {}}')
    return v


def cli(*args: str):
    from devenv.cli.app import app

    r = CliRunner().invoke(app, list(args))
    assert "Traceback" not in r.output, r.output
    return r


def leftovers() -> list[str]:
    """Anything in the store's root that is not a finished box (half-unpacked folders, temp files)."""
    root = boxes.store_root()
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


class Server:
    """A throw-away HTTP server on 127.0.0.1: files from a folder, extra routes, every path requested."""

    def __init__(self, root: Path, routes: dict | None = None) -> None:
        self.requests: list[str] = []
        root_, routes_, requests = root, routes or {}, self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(root_), **k)

            def log_message(self, *a):
                pass

            def do_GET(self):
                requests.append(self.path)
                if self.path in routes_:
                    status, headers, body = routes_[self.path]
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def site(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    servers = []

    def start(routes: dict | None = None) -> Server:
        s = Server(folder, routes)
        servers.append(s)
        return s

    start.folder = folder  # type: ignore[attr-defined]
    yield start
    for s in servers:
        s.close()


def catalog(folder: Path, *, name="acme/tiny", version="1", url="tiny.box", ctype="sha256", checksum="0" * 64):
    doc = {
        "name": name,
        "versions": [
            {
                "version": version,
                "providers": [{"name": "libvirt", "url": url, "checksum_type": ctype, "checksum": checksum}],
            }
        ],
    }
    (folder / "catalog.json").write_text(json.dumps(doc))


# -- 1. virtualbox import: OVF hrefs ------------------------------------------------------------


@pytest.mark.parametrize(
    "href",
    [
        "{victim}/secret.txt",  # absolute
        "../../../../../../../../..{victim}/secret.txt",  # climbing out of the unpack folder
        "./../../../../../../../..{victim}/secret.txt",
        "sub/box-disk001.vmdk",  # not at the root
        "file://{victim}/secret.txt",
        "..",
        "box-disk001.vmdk/../../secret.txt",
        "",
    ],
)
def test_ovf_href_never_reaches_outside_the_box(tmp_path, victim, href):
    before = tree(victim)
    box = vbox_box(tmp_path / "vb.box", href.format(victim=victim))
    with pytest.raises(BoxError) as exc:
        boxfile.add_box_file(box, name="vb", version="1")
    assert "Traceback" not in exc.value.message
    assert tree(victim) == before, "the host file was moved or changed"
    assert boxes.find_stored("vb", None, "virtualbox") is None and leftovers() == []
    # and `box remove` later has nothing of the victim's to delete
    assert cli("box", "remove", "vb").exit_code == 7
    assert tree(victim) == before


@pytest.mark.parametrize(
    "ovf",
    [
        # XXE: an external entity that would read a host file into the descriptor.
        '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<Envelope xmlns:ovf="o"><References><File ovf:href="&x;"/></References></Envelope>',
        # Billion laughs.
        '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        '<Envelope xmlns:ovf="o"><References><File ovf:href="box-disk001.vmdk"/></References>&b;</Envelope>',
        '<?xml version="1.0"?><!doctype Envelope SYSTEM "http://127.0.0.1:9/x.dtd"><Envelope/>',
        "<Envelope><References><File ovf:href='box-disk001.vmdk'></References>",  # not XML
    ],
)
def test_ovf_is_parsed_as_xml_without_dtd_or_entities(tmp_path, ovf):
    box = vbox_box(tmp_path / "vb.box", "", ovf=ovf)
    with pytest.raises(BoxError, match="DTD or entities|not valid XML"):
        boxfile.add_box_file(box, name="vb", version="1")
    assert leftovers() == []


def test_a_real_ovf_with_a_namespaced_href_is_added(tmp_path):
    box = vbox_box(tmp_path / "vb.box", "box-disk001.vmdk")
    added = boxfile.add_box_file(box, name="vb", version="1", checksum=f"sha256:{sha(box)}")
    assert added.file("disk").read_bytes() == VMDK and added.file("ovf").name == "box.ovf"


def test_an_ovf_disk_that_is_a_symlink_in_the_archive_is_refused(tmp_path, victim):
    before = tree(victim)
    box = vbox_box(
        tmp_path / "vb.box",
        "box-disk001.vmdk",
        disk=_member("box-disk001.vmdk", type_=tarfile.SYMTYPE, linkname=f"{victim}/secret.txt"),
    )
    with pytest.raises(BoxError, match="symbolic link"):
        boxfile.add_box_file(box, name="vb", version="1")
    assert tree(victim) == before


def test_a_catalog_libvirt_entry_serving_a_virtualbox_box_is_refused(tmp_path, site, victim):
    before = tree(victim)
    box = vbox_box(site.folder / "tiny.box", "box-disk001.vmdk")
    catalog(site.folder, checksum=sha(box))
    srv = site()
    r = cli("box", "add", f"{srv.url}/catalog.json")
    assert r.exit_code == 7, r.output
    assert "virtualbox box, but a libvirt box was asked for" in r.output
    assert boxes.list_stored() == [] and leftovers() == [] and tree(victim) == before


def test_store_box_never_moves_a_file_from_outside_its_work_folder(tmp_path, victim):
    work = tmp_path / "work"
    work.mkdir()
    before = tree(victim)
    with pytest.raises(BoxError, match="outside devenv's work folder"):
        boxes.store_box("x", "1", "libvirt", {"disk": victim / "secret.txt"}, {}, work=work)
    # Through a symlink inside the work folder: resolved, still outside.
    (work / "disk.img").symlink_to(victim / "secret.txt")
    with pytest.raises(BoxError, match="not a regular file"):
        boxes.store_box("x", "1", "libvirt", {"disk": work / "disk.img"}, {}, work=work)
    # Without a work folder a file is copied, never moved.
    stored = boxes.store_box("x", "1", "libvirt", {"disk": victim / "secret.txt"}, {})
    assert stored.file("disk").read_text() == "do not move me\n"
    assert tree(victim) == before


# -- 2. names and versions never become paths ------------------------------------------------------

BAD_NAMES = ["..", ".", "...", "../a", "a/b", "/abs", "a\\b", "-rf", ".hidden", "a b", "x" * 200, "é", "a\nb"]


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("option", ["--name", "--version"])
def test_cli_box_add_refuses_a_path_as_name_or_version(tmp_path, victim, bad, option):
    box = libvirt_box(tmp_path / "ok.box")
    home = Path(os.environ["DEVENV_HOME"])
    # What `store/../a/../b/libvirt` would land on, with a folder already there to be rmtree'd.
    planted = home / "b" / "libvirt"
    planted.mkdir(parents=True)
    (planted / "keep").write_text("x")
    before, home_before = tree(victim), tree(home)
    args = ["box", "add", str(box), "--name", "ok", "--version", "1"]
    args[args.index(option) + 1] = bad
    r = cli(*args)
    assert r.exit_code == 7, r.output
    assert "invalid box " in r.output
    assert tree(victim) == before and tree(home) == home_before, "nothing created or removed"


def test_cli_name_and_version_pair_of_the_issue(tmp_path):
    box = libvirt_box(tmp_path / "ok.box")
    home = Path(os.environ["DEVENV_HOME"])
    (home / "b" / "libvirt").mkdir(parents=True)
    (home / "b" / "libvirt" / "keep").write_text("x")
    r = cli("box", "add", str(box), "--name", "../a", "--version", "../b")
    assert r.exit_code == 7 and (home / "b" / "libvirt" / "keep").exists()


def test_the_default_name_from_a_file_name_is_checked_too(tmp_path):
    box = libvirt_box(tmp_path / "-oops.box")
    r = cli("box", "add", str(box))
    assert r.exit_code == 7 and "--name" in r.output
    assert cli("box", "add", str(box), "--name", "fine").exit_code == 0


@pytest.mark.parametrize(
    "field,value",
    [
        ("version", "../../../../x"),
        ("version", ".."),
        ("version", "1/2"),
        ("version", 3.5),
        ("version", None),
        ("name", ".."),
        ("name", "../../x"),  # "/" becomes "-": "..-..-x" starts with "." and is refused
        ("name", "acme/../x"),  # "acme-..-x": one plain folder name, added (see below)
        ("name", 7),
    ],
)
def test_catalog_names_and_versions_are_checked(tmp_path, site, victim, field, value):
    box = libvirt_box(site.folder / "tiny.box")
    kw = {"checksum": sha(box), field: value}
    catalog(site.folder, **kw)
    srv = site()
    before = tree(victim)
    r = cli("box", "add", f"{srv.url}/catalog.json")
    if field == "name" and value == "acme/../x":
        assert r.exit_code == 0, r.output
        assert [b.name for b in boxes.list_stored()] == ["acme-..-x"]
        assert boxes.list_stored()[0].folder.parent.parent.parent == boxes.store_root()
        return
    assert r.exit_code == 7, r.output
    assert "Traceback" not in r.output and "internal error" not in r.output
    assert boxes.list_stored() == [] and tree(victim) == before
    assert "/tiny.box" not in srv.requests, "refused before the box was downloaded"


def test_store_lookups_refuse_paths():
    for bad in ("..", "../x", "a/b", ""):
        with pytest.raises(BoxError, match="invalid box"):
            boxes.find_stored(bad, None, "libvirt")
        with pytest.raises(BoxError, match="invalid box"):
            boxes.find_stored("ok", bad or "..", "libvirt")
        with pytest.raises(BoxError, match="invalid box"):
            boxes.remove_stored(bad)
        with pytest.raises(BoxError, match="invalid box"):
            boxes.store_box(bad or "..", "1", "libvirt", {}, {})


@pytest.mark.parametrize("ref", ["../victim", "x@../..", "..@1", "a/b@1"])
def test_box_remove_refuses_paths(ref, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    r = cli("box", "remove", ref)
    assert r.exit_code == 7 and "invalid box" in r.output, r.output


@pytest.mark.parametrize("level", ["name", "version", "provider"])
def test_box_remove_never_follows_a_symlink_planted_in_the_store(victim, monkeypatch, level):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    root = boxes.store_root()
    before = tree(victim)
    if level == "name":
        root.mkdir(parents=True)
        (root / "evil").symlink_to(victim)  # store/evil/1/libvirt/box.json is the victim's
    elif level == "version":
        (root / "evil").mkdir(parents=True)
        (root / "evil" / "1").symlink_to(victim / "1")
    else:
        (root / "evil" / "1").mkdir(parents=True)
        (root / "evil" / "1" / "libvirt").symlink_to(victim / "1" / "libvirt")
    r = cli("box", "remove", "evil")
    assert r.exit_code == 7, r.output  # nothing of devenv's to remove
    assert cli("box", "prune").exit_code == 0
    assert tree(victim) == before
    assert boxes.list_stored() == []


@pytest.mark.parametrize("level", ["name", "version", "provider"])
def test_store_box_never_writes_through_a_symlink_planted_in_the_store(tmp_path, victim, level):
    root = boxes.store_root()
    if level == "name":
        root.mkdir(parents=True)
        (root / "n").symlink_to(victim)
    elif level == "version":
        (root / "n").mkdir(parents=True)
        (root / "n" / "1").symlink_to(victim / "1")
    else:
        (root / "n" / "1").mkdir(parents=True)
        (root / "n" / "1" / "libvirt").symlink_to(victim / "1" / "libvirt")
    before = tree(victim)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"disk")
    with pytest.raises(BoxError, match="leads outside the box store|not a folder of the store"):
        boxes.store_box("n", "1", "libvirt", {"disk": disk}, {})
    assert tree(victim) == before


def test_devenv_json_is_type_checked(tmp_path):
    for doc, bad in (
        ({"ssh_user": "-oProxyCommand=touch /tmp/pwned"}, "ssh_user"),
        ({"ssh_user": 5}, "ssh_user"),
        ({"sync": "virtiofs"}, "sync"),
        ({"baked": [1]}, "baked"),
        ({"cmdline": "a\x1b[2Jb"}, "cmdline"),
    ):
        box = libvirt_box(tmp_path / "b.box", _member("devenv.json", json.dumps(doc).encode()))
        with pytest.raises(BoxError, match=bad):
            boxfile.add_box_file(box, name="b", version="1")
    for text in (b"[1, 2]", b"{", b"[" * 100000):
        box = make_tar(tmp_path / "m.box", [_member("metadata.json", text), DISK])
        with pytest.raises(BoxError, match="metadata.json"):
            boxfile.add_box_file(box, name="b", version="1")
    assert leftovers() == []


# -- 3. tar members are checked, not filtered ----------------------------------------------------


def _crafted(victim: Path) -> dict[str, list[tuple]]:
    v = str(victim)
    return {
        "absolute": [_member(f"{v}/planted", b"x")],
        "dotdot": [_member(f"../../../../../../../../../..{v}/planted", b"x")],
        "dot-slash-dotdot": [_member("./../planted", b"x")],
        "subfolder": [_member("sub/box.img", b"x")],
        "folder": [_member("sub", type_=tarfile.DIRTYPE)],
        "symlink": [_member("box.img", type_=tarfile.SYMTYPE, linkname=f"{v}/secret.txt")],
        "relative-symlink": [_member("box.img", type_=tarfile.SYMTYPE, linkname="../../../../../../secret.txt")],
        "hardlink": [_member("box.img", type_=tarfile.LNKTYPE, linkname=f"{v}/secret.txt")],
        "inner-symlink": [_member("vmlinuz", type_=tarfile.SYMTYPE, linkname="metadata.json")],
        "hardlink-to-member": [
            _member("Vagrantfile", b"x"),
            _member("box.img", type_=tarfile.LNKTYPE, linkname="Vagrantfile"),
        ],
        # CVE-2025-4517 shape: a chain of directory symlinks, then a file written through it.
        "symlink-chain": [
            _member("a", type_=tarfile.SYMTYPE, linkname="."),
            _member("a/" * 40 + "b", type_=tarfile.SYMTYPE, linkname=v),
            _member("a/" * 40 + "b/planted", b"x"),
        ],
        "char-device": [_member("box.img", type_=tarfile.CHRTYPE)],
        "block-device": [_member("box.img", type_=tarfile.BLKTYPE)],
        "fifo": [_member("box.img", type_=tarfile.FIFOTYPE)],
        "duplicate": [_member("box.img", b"one"), _member("box.img", b"two")],
        "not-allow-listed": [_member("evil.sh", b"#!/bin/sh\n")],
        "long-name": [_member("x" * 300 + ".img", b"x")],
        "control-chars": [_member("box\x1b]0;pwned\x07.img", b"x")],
    }


@pytest.mark.parametrize("case", list(_crafted(Path("/v"))))
@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_crafted_tar_members_are_refused(tmp_path, victim, case, mode):
    before = tree(victim)
    outside = tree(tmp_path)
    box = make_tar(tmp_path / "bad.box", [LIBVIRT_META, *_crafted(victim)[case], DISK], mode)
    with pytest.raises(BoxError) as exc:
        boxfile.add_box_file(box, name="bad", version="1")
    assert "\x1b" not in exc.value.message, "control characters are escaped"
    assert tree(victim) == before
    after = {k: v for k, v in tree(tmp_path).items() if k != str(box)}
    assert after == {k: v for k, v in outside.items() if k != str(box)}, "nothing written outside the store"
    assert boxes.list_stored() == [] and leftovers() == []


def test_a_virtualbox_file_in_a_libvirt_box_is_refused_after_the_format_is_known(tmp_path):
    box = libvirt_box(tmp_path / "b.box", _member("box.ovf", b"<Envelope/>"))
    with pytest.raises(BoxError, match="a libvirt box does not contain box.ovf"):
        boxfile.add_box_file(box, name="b", version="1")
    assert leftovers() == []


def test_size_cap_and_member_count(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVENV_BOX_MAX_SIZE", "1KiB")
    big = libvirt_box(tmp_path / "big.box", _member("vmlinuz", b"\0" * 2048))
    with pytest.raises(BoxError, match="unpacks to more than"):
        boxfile.add_box_file(big, name="b", version="1")
    monkeypatch.setenv("DEVENV_BOX_MAX_SIZE", "lots")
    with pytest.raises(BoxError, match="DEVENV_BOX_MAX_SIZE"):
        boxfile.add_box_file(big, name="b", version="1")
    monkeypatch.delenv("DEVENV_BOX_MAX_SIZE")
    many = libvirt_box(tmp_path / "many.box", *[_member(f"box_{i}.img", b"d") for i in range(1, 80)])
    with pytest.raises(BoxError, match="more than 64 files"):
        boxfile.add_box_file(many, name="b", version="1")
    assert leftovers() == []


def test_free_disk_space_is_checked_before_writing(tmp_path, monkeypatch):
    from devenv.boxes import archive as boxarchive

    monkeypatch.setattr(boxarchive, "_free_bytes", lambda folder: 10)
    with pytest.raises(BoxError, match="not enough free disk space"):
        boxfile.add_box_file(libvirt_box(tmp_path / "b.box"), name="b", version="1")
    assert leftovers() == []


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_every_compression_of_a_good_box_is_added(tmp_path, mode):
    box = libvirt_box(tmp_path / "ok.box", _member("./Vagrantfile", b"Vagrant.configure"), mode=mode)
    added = boxfile.add_box_file(
        box, name="ok", version="1", checksum=f"sha512:{hashlib.sha512(box.read_bytes()).hexdigest()}"
    )
    assert added.file("disk").read_bytes() == DISK[1]
    assert added.meta["source"]["sha256"] == sha(box)


def test_a_sparse_gnu_tar_box_like_vagrant_libvirt_makes_is_added(tmp_path):
    """vagrant-libvirt's create_box.sh packs with `tar -S`: GNU sparse members must work."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "metadata.json").write_text('{"provider": "libvirt"}')
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src / "box.img"), "8M"], check=True)
    with open(src / "box.img", "r+b") as f:  # a hole in the middle, as a real qcow2 with data has
        f.seek(8 * 1024 * 1024)
        f.write(b"tail")
    out = tmp_path / "sparse.box"
    subprocess.run(["tar", "-S", "-czf", str(out), "-C", str(src), "./metadata.json", "./box.img"], check=True)
    with tarfile.open(out) as tar:
        assert any(m.issparse() for m in tar.getmembers()), "GNU tar wrote a sparse member"
    added = boxfile.add_box_file(out, name="sparse", version="1")
    assert added.digest() == sha(src / "box.img")


def test_extraction_works_on_debians_python_without_tar_filters(tmp_path):
    """Debian 12's /usr/bin/python3 (3.11.2) has no extractall(filter=): the checked extraction needs none."""
    py = Path("/usr/bin/python3")
    if not py.exists():
        missing("/usr/bin/python3 (Debian's python3) is not installed here (apt-get install python3)")
    good = libvirt_box(tmp_path / "good.box")
    bad = make_tar(
        tmp_path / "bad.box", [LIBVIRT_META, _member("box.img", type_=tarfile.SYMTYPE, linkname="/etc/passwd")]
    )
    script = textwrap.dedent(
        f"""
        import sys, tarfile
        from pathlib import Path
        from devenv.boxes import archive as boxarchive
        from devenv.errors import BoxError
        print(sys.version_info[:3], hasattr(tarfile, "data_filter"))
        folder, names = boxarchive.extract(Path({str(good)!r}), Path({str(tmp_path)!r}))
        assert sorted(names) == ["box.img", "metadata.json"], names
        try:
            boxarchive.extract(Path({str(bad)!r}), Path({str(tmp_path)!r}))
        except BoxError as exc:
            print("refused:", exc.message)
        else:
            raise SystemExit("a symlink member was extracted")
        """
    )
    r = subprocess.run(
        [str(py), "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); exec({script!r})"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and "symbolic link" in r.stdout
    if sys.version_info[:3] != (3, 11, 2):
        assert "(3, 11" in r.stdout


# -- 9. downloads -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "checksum", ["md5:" + "0" * 32, "sha1:" + "0" * 40, "crc32:00", "sha256:xyz", "sha256:" + "0" * 63]
)
def test_weak_or_malformed_checksums_are_refused_before_downloading(site, checksum):
    libvirt_box(site.folder / "t.box")
    srv = site()
    r = cli("box", "add", f"{srv.url}/t.box", "--checksum", checksum)
    assert r.exit_code == 7, r.output
    assert "checksum" in r.output and srv.requests == []


@pytest.mark.parametrize("ctype", ["md5", "sha1", "MD5"])
def test_catalog_md5_and_sha1_are_refused_before_downloading(site, ctype):
    libvirt_box(site.folder / "tiny.box")
    catalog(site.folder, ctype=ctype, checksum="0" * (32 if ctype.lower() == "md5" else 40))
    srv = site()
    r = cli("box", "add", f"{srv.url}/catalog.json")
    assert r.exit_code == 7 and "unsupported checksum type" in r.output, r.output
    assert srv.requests == ["/catalog.json"], "the box itself was never requested"


def test_a_remote_box_without_checksum_needs_insecure_which_is_recorded(site):
    box = libvirt_box(site.folder / "t.box")
    srv = site()
    r = cli("box", "add", f"{srv.url}/t.box")
    assert r.exit_code == 7 and "--insecure" in r.output and srv.requests == []
    r = cli("box", "add", f"{srv.url}/t.box", "--insecure")
    assert r.exit_code == 0, r.output
    assert "without a checksum" in r.output
    stored = boxes.find_stored("t", "0", "libvirt")
    assert stored.meta["source"] == {"url": f"{srv.url}/t.box", "insecure": True, "sha256": sha(box)}


def test_the_recorded_source_is_the_url_not_a_temp_path(site):
    box = libvirt_box(site.folder / "t.box")
    catalog(site.folder, url="t.box", checksum=sha(box))
    srv = site()
    assert cli("box", "add", f"{srv.url}/t.box", "--checksum", f"sha256:{sha(box)}", "--name", "direct").exit_code == 0
    assert boxes.find_stored("direct", "0", "libvirt").meta["source"]["url"] == f"{srv.url}/t.box"
    assert cli("box", "add", f"{srv.url}/catalog.json").exit_code == 0
    src = boxes.find_stored("acme-tiny", "1", "libvirt").meta["source"]
    assert src == {"url": f"{srv.url}/t.box", "catalog": f"{srv.url}/catalog.json", "sha256": sha(box)}


@pytest.mark.parametrize("url", ["file://{victim}/secret.txt", "file:{victim}/secret.txt", "ftp://127.0.0.1:9/x.box"])
def test_a_remote_catalog_cannot_point_at_the_users_files(site, victim, url):
    target = victim / "secret.txt"
    catalog(site.folder, url=url.format(victim=victim), checksum="0" * 64)
    srv = site()
    r = cli("box", "add", f"{srv.url}/catalog.json")
    assert r.exit_code == 7, r.output
    assert "may point only at http" in r.output
    assert sha(target) not in r.output, "no oracle of a host file's digest"


def test_a_mismatch_never_prints_the_digest_of_what_was_fetched(site):
    box = libvirt_box(site.folder / "tiny.box")
    catalog(site.folder, checksum="1" * 64)
    srv = site()
    r = cli("box", "add", f"{srv.url}/catalog.json")
    assert r.exit_code == 7 and "checksum mismatch" in r.output
    assert sha(box) not in r.output


def test_downloads_are_capped_and_redirects_stay_on_http(site, monkeypatch):
    routes = {
        "/huge.box": (200, {"Content-Length": str(10**12)}, b""),
        "/ftp.box": (302, {"Location": "ftp://127.0.0.1:9/x.box", "Content-Length": "0"}, b""),
        "/file.box": (302, {"Location": "file:///etc/passwd", "Content-Length": "0"}, b""),
        "/badlen.box": (200, {"Content-Length": "abc"}, b"xyz"),
    }
    srv = site(routes)
    r = cli("box", "add", f"{srv.url}/huge.box", "--checksum", "sha256:" + "0" * 64)
    assert r.exit_code == 7 and "more than" in r.output, r.output
    for path in ("/ftp.box", "/file.box"):
        r = cli("box", "add", f"{srv.url}{path}", "--checksum", "sha256:" + "0" * 64)
        assert r.exit_code == 7 and "internal error" not in r.output, r.output
    r = cli("box", "add", f"{srv.url}/badlen.box", "--checksum", "sha256:" + "0" * 64)
    assert r.exit_code == 7 and "internal error" not in r.output, r.output
    libvirt_box(site.folder / "ok.box", _member("vmlinuz", b"\0" * 4096))
    monkeypatch.setenv("DEVENV_BOX_MAX_SIZE", "1024")
    r = cli("box", "add", f"{srv.url}/ok.box", "--insecure")
    assert r.exit_code == 7 and "more than" in r.output, r.output
    assert leftovers() == []


def test_a_version_picked_from_a_catalog_with_mixed_version_words_is_no_internal_error(site):
    box = libvirt_box(site.folder / "t.box")
    doc = {
        "name": "t",
        "versions": [
            {
                "version": v,
                "providers": [{"name": "libvirt", "url": "t.box", "checksum_type": "sha256", "checksum": sha(box)}],
            }
            for v in ("1.2", "1.a", "2-rc1", "2")
        ],
    }
    (site.folder / "catalog.json").write_text(json.dumps(doc))
    srv = site()
    r = cli("box", "add", f"{srv.url}/catalog.json")
    assert r.exit_code == 0, r.output


# -- 16. modes whatever the umask ----------------------------------------------------------------


def test_store_folders_and_files_have_explicit_modes_under_umask_0(tmp_path, monkeypatch):
    home = tmp_path / "fresh-home" / "devenv"
    monkeypatch.setenv("DEVENV_HOME", str(home))
    box = libvirt_box(tmp_path / "m.box", _member("vmlinuz", b"k"), _member("initrd.img", b"i"))
    old = os.umask(0)
    try:
        added = boxfile.add_box_file(box, name="m", version="1")
        vb = boxfile.add_box_file(vbox_box(tmp_path / "vb.box", "box-disk001.vmdk"), name="vb", version="1")
    finally:
        os.umask(old)
    root = boxes.store_root()
    folders = [home, root, root / "m", root / "m" / "1", added.folder, vb.folder]
    for d in folders:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o755, (d, oct(os.stat(d).st_mode))
    for f in [*added.folder.iterdir(), *vb.folder.iterdir()]:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o644, (f, oct(os.stat(f).st_mode))


# -- the recipe path: a `box` source of a recipe gets the same checked extraction ----------------


def _recipe_with_box(tmp_path: Path, box: Path):
    from devenv.model import recipe as boxes_mod

    root = tmp_path / "proj"
    (root / "boxes").mkdir(parents=True, exist_ok=True)
    (root / "boxes" / "fromvag.toml").write_text(
        textwrap.dedent(
            f"""\
            name = "fromvag"
            version = "1"
            outputs = ["libvirt"]
            sources = [{{ type = "box", path = "{box}", sha256 = "{sha(box)}" }}]
            """
        )
    )
    return boxes_mod.load_recipe(root / "boxes" / "fromvag.toml")


@pytest.mark.parametrize(
    "bad",
    [
        _member("vmlinuz", type_=tarfile.SYMTYPE, linkname="box.img"),
        _member("vmlinuz", type_=tarfile.SYMTYPE, linkname="/etc/passwd"),
        _member("../../vmlinuz", b"k"),
        _member("initrd.img", type_=tarfile.LNKTYPE, linkname="box.img"),
    ],
)
def test_a_recipe_box_source_is_extracted_with_the_same_checks(tmp_path, victim, bad):
    from devenv.boxes.builders import libvirt as vmbox

    before = tree(victim)
    recipe = _recipe_with_box(tmp_path, libvirt_box(tmp_path / "src.box", bad))
    with pytest.raises(BoxError):
        vmbox.build_libvirt_box(recipe)
    assert tree(victim) == before and boxes.list_stored() == [] and leftovers() == []


def test_a_recipe_box_source_must_be_a_libvirt_box(tmp_path):
    from devenv.boxes.builders import libvirt as vmbox

    recipe = _recipe_with_box(tmp_path, vbox_box(tmp_path / "vb.box", "box-disk001.vmdk"))
    with pytest.raises(BoxError, match="virtualbox box, but a libvirt box was asked for"):
        vmbox.build_libvirt_box(recipe)
    good = _recipe_with_box(
        tmp_path, libvirt_box(tmp_path / "ok.box", _member("vmlinuz", b"k"), _member("initrd.img", b"i"))
    )
    stored = vmbox.build_libvirt_box(good)
    assert stored.file("kernel").read_bytes() == b"k" and stored.file("disk").read_bytes() == DISK[1]


def test_a_recipe_name_or_version_too_long_for_the_store_is_a_devfile_error(tmp_path):
    from devenv.errors import DevfileError
    from devenv.model import recipe as recipes

    (tmp_path / "boxes").mkdir()
    p = tmp_path / "boxes" / "long.toml"
    p.write_text(f'name = "{"n" * 129}"\nversion = "1"\nsources = [{{ type = "busybox" }}]\n')
    with pytest.raises(DevfileError) as exc:
        recipes.load_recipe(p)
    assert "longer than 128" in str(exc.value.problems)
