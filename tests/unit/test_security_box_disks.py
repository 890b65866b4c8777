"""Box disks that reach host files (round 2, slice F): qcow2 backing/data files, VMDK extents, the OVF.

Every disk here is made by the real qemu-img (then, for the variants qemu-img will not write,
patched byte by byte as an attacker would) and put in a .box the test writes itself; the box is
added through the real `devenv box add` CLI. A refused box: exit 7, a message naming the problem,
nothing in the store, no unpack folder left, the host "victim" file untouched. A good qcow2,
streamOptimized and monolithicSparse VMDK box is still added.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devenv.boxes import store as boxes
from devenv.boxes import vagrantbox as boxfile
from devenv.cli.app import app
from devenv.contract import BoxArtifact
from devenv.errors import BoxError
from devenv.model import recipe as recipes
from tests.support import require_module, require_tool

REPO = Path(__file__).resolve().parents[2]
FAKE_VBOXMANAGE = REPO / "tests" / "fakes" / "VBoxManage"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch) -> None:
    require_tool("qemu-img", "apt-get install qemu-utils")
    monkeypatch.setenv("DEVENV_HOME", str(tmp_path / "devenv-home"))  # a box store of the test's own


@pytest.fixture
def victim(tmp_path) -> Path:
    """A host file outside the box store that a hostile disk names."""
    v = tmp_path / "host" / "id_ed25519"
    v.parent.mkdir()
    v.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY----- host secret\n".ljust(4096, b"\0"))
    return v


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qcow2(path: Path, *opts: str, size: str = "1M") -> Path:
    qemu_img("create", "-q", "-f", "qcow2", *opts, str(path), size)
    return path


def vmdk(path: Path, subformat: str = "streamOptimized", size: str = "1M") -> Path:
    qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", str(path), size)
    return path


def make_box(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def libvirt_box(path: Path, disk: bytes, meta: dict | None = None) -> Path:
    meta = meta or {"provider": "libvirt", "format": "qcow2", "virtual_size": 1}
    return make_box(path, {"metadata.json": json.dumps(meta).encode(), "box.img": disk})


def ovf_for(*hrefs: str, extra: str = "") -> str:
    refs = "".join(f'<File ovf:id="f{i}" ovf:href="{h}"/>' for i, h in enumerate(hrefs))
    return (
        '<?xml version="1.0"?>\n<Envelope ovf:version="1.0" xmlns="http://schemas.dmtf.org/ovf/envelope/1"'
        ' xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"'
        ' xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"'
        ' xmlns:vbox="http://www.virtualbox.org/ovf/machine">'
        f"<References>{refs}</References>{extra}</Envelope>\n"
    )


def vbox_box(path: Path, disks: dict[str, bytes], ovf: str | None = None) -> Path:
    members = {"metadata.json": b'{"provider": "virtualbox"}', "box.ovf": (ovf or ovf_for(*disks)).encode()}
    members.update(disks)
    return make_box(path, members, "w")


def add(box: Path, name: str = "b") -> object:
    return CliRunner().invoke(app, ["box", "add", str(box), "--name", name, "--version", "1"])


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def assert_refused(result, victim: Path, before: str, *words: str) -> None:
    out = result.output
    assert result.exit_code == 7, out
    assert "Traceback" not in out and "internal error" not in out, out
    for w in words:
        assert w in out, out
    assert boxes.list_stored() == [], "nothing is stored"
    root = boxes.store_root()
    left = [p.name for p in root.rglob("*")] if root.exists() else []
    assert not [n for n in left if n.startswith(".devenv-unpack-")], left
    assert digest(victim) == before, "the host file is untouched"


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def rewrite_descriptor(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Rewrite a sparse VMDK's embedded descriptor in place (what qemu-img will not write)."""
    with open(path, "r+b") as f:
        head = f.read(512)
        off, size = struct.unpack("<QQ", head[28:44])
        f.seek(off * 512)
        text = f.read(size * 512).split(b"\0", 1)[0].decode()
        new = edit(text).encode()
        assert len(new) <= size * 512
        f.seek(off * 512)
        f.write(new.ljust(size * 512, b"\0"))


# -- 1. qcow2: backing file, data file, json:/protocol names ----------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "backing-raw",
        "backing-qcow2",
        "backing-relative",
        "backing-json",
        "backing-protocol",
        "backing-missing-file",
        "data-file-raw",
        "data-file",
        "data-file-extension-only",
        "encrypted",
        "unknown-incompatible-feature",
        "corrupt",
    ],
)
def test_a_libvirt_box_whose_qcow2_reaches_a_host_file_is_refused(tmp_path, victim, case):
    img = tmp_path / "box.img"
    host_qcow2 = qcow2(tmp_path / "host" / "other.qcow2")
    rel = os.path.relpath(victim, boxes.store_root())
    make = {
        "backing-raw": lambda: qcow2(img, "-b", str(victim), "-F", "raw"),
        "backing-qcow2": lambda: qcow2(img, "-b", str(host_qcow2), "-F", "qcow2"),
        "backing-relative": lambda: qcow2(img, "-u", "-b", rel, "-F", "raw"),
        "backing-json": lambda: qcow2(
            img, "-u", "-b", 'json:{"file.driver":"file","file.filename":"' + str(victim) + '"}', "-F", "raw"
        ),
        "backing-protocol": lambda: qcow2(img, "-u", "-b", "nbd://127.0.0.1:9/x", "-F", "raw"),
        "backing-missing-file": lambda: qcow2(img, "-u", "-b", "/nonexistent/later.img", "-F", "qcow2"),
        "data-file-raw": lambda: qcow2(img, "-o", f"data_file={victim},data_file_raw=on"),
        "data-file": lambda: qcow2(img, "-o", f"data_file={tmp_path / 'host' / 'data.bin'}"),
    }
    if case in make:
        make[case]()
    else:
        qcow2(img)
        if case == "data-file-extension-only":
            # The data-file name extension without the incompatible bit: still a file named by the disk.
            other = qcow2(tmp_path / "d.img", "-o", f"data_file={victim},data_file_raw=on")
            data = bytearray(other.read_bytes())
            data[72:80] = b"\0" * 8
            img.write_bytes(bytes(data))
        elif case == "encrypted":
            patch(img, 32, struct.pack(">I", 2))  # crypt_method = LUKS
        elif case == "unknown-incompatible-feature":
            patch(img, 72, struct.pack(">Q", 1 << 40))
        elif case == "corrupt":
            patch(img, 72, struct.pack(">Q", 1 << 1))
    before = digest(victim)  # after crafting: qemu-img sizes a data file it is given
    result = add(libvirt_box(tmp_path / "evil.box", img.read_bytes()))
    assert_refused(result, victim, before, "box.img", "self-contained")


def test_the_qcow2_repro_backing_and_data_file_are_refused_and_name_the_cause(tmp_path, victim):
    before = digest(victim)
    img = qcow2(tmp_path / "b.img", "-b", str(victim), "-F", "raw")
    assert_refused(add(libvirt_box(tmp_path / "b.box", img.read_bytes())), victim, before, "backing file")
    img = qcow2(tmp_path / "d.img", "-o", f"data_file={victim},data_file_raw=on")
    before = digest(victim)  # after crafting: qemu-img sizes a data file it is given
    assert_refused(add(libvirt_box(tmp_path / "d.box", img.read_bytes())), victim, before, "external data file")


@pytest.mark.parametrize("fmt", ["raw", "vmdk", "vdi", "vpc", "qed", "vmdk-descriptor"])
def test_a_libvirt_box_disk_that_is_not_qcow2_is_refused(tmp_path, victim, fmt):
    before = digest(victim)
    if fmt == "vmdk-descriptor":
        data = f'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 8 FLAT "{victim}" 0\n'.encode()
    else:
        img = tmp_path / f"x.{fmt}"
        qemu_img("create", "-q", "-f", fmt, str(img), "1M")
        data = img.read_bytes()
    assert_refused(add(libvirt_box(tmp_path / "x.box", data)), victim, before, "box.img")


def test_a_libvirt_box_whose_metadata_says_another_format_is_refused(tmp_path, victim):
    before = digest(victim)
    box = libvirt_box(
        tmp_path / "r.box", qcow2(tmp_path / "g.img").read_bytes(), {"provider": "libvirt", "format": "raw"}
    )
    assert_refused(add(box), victim, before, "qcow2")


def test_a_good_qcow2_box_is_added(tmp_path):
    img = qcow2(tmp_path / "g.img", size="16M")
    result = add(libvirt_box(tmp_path / "g.box", img.read_bytes()), "good")
    assert result.exit_code == 0, result.output
    stored = boxes.find_stored("good", "1", "libvirt")
    assert stored is not None and stored.file("disk").read_bytes() == img.read_bytes()


def test_a_recipe_cloud_image_with_a_backing_file_is_refused_before_qemu_img_reads_it(tmp_path, victim):
    """A recipe's cloud-image source is converted by qemu-img: checked first, read with -f given."""
    from devenv.boxes.builders import libvirt as vmbox

    img = qcow2(tmp_path / "cloud.qcow2", "-b", str(victim), "-F", "raw")
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "cloud.toml").write_text(
        f'name = "cloud"\nversion = "1"\noutputs = ["libvirt"]\n'
        f'[[sources]]\ntype = "cloud-image"\npath = "cloud.qcow2"\nsha256 = "{digest(img)}"\n'
    )
    (tmp_path / "Devfile").write_text('[machines.a]\nbox = "cloud"\n')
    recipe = recipes.find_recipe(recipes.parse_ref("cloud"), tmp_path)
    with pytest.raises(BoxError, match="backing file"):
        vmbox.build_libvirt_box(recipe)
    assert boxes.list_stored() == []


def test_a_recipe_box_source_with_a_data_file_is_refused(tmp_path, victim):
    from devenv.boxes.builders import libvirt as vmbox

    img = qcow2(tmp_path / "d.img", "-o", f"data_file={victim},data_file_raw=on")
    box = libvirt_box(tmp_path / "src.box", img.read_bytes())
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "fromb.toml").write_text(
        f'name = "fromb"\nversion = "1"\noutputs = ["libvirt"]\n'
        f'[[sources]]\ntype = "box"\npath = "src.box"\nsha256 = "{digest(box)}"\n'
    )
    (tmp_path / "Devfile").write_text('[machines.a]\nbox = "fromb"\n')
    recipe = recipes.find_recipe(recipes.parse_ref("fromb"), tmp_path)
    with pytest.raises(BoxError, match="external data file"):
        vmbox.build_libvirt_box(recipe)
    assert boxes.list_stored() == []


# -- libvirt: checked again at use; the domain XML spells out the whole chain -----------------------


def _stored_unchecked(tmp_path: Path, victim: Path) -> boxes.StoredBox:
    """A box put in the store the way an older devenv did (no disk check): its disk names the victim."""
    (tmp_path / "staging").mkdir()
    img = qcow2(tmp_path / "staging" / "box.img", "-b", str(victim), "-F", "raw")
    return boxes.store_box("old", "1", "libvirt", {"disk": img}, {"bootloader": True})


def test_the_libvirt_driver_checks_the_box_disk_before_making_the_overlay(tmp_path, victim, monkeypatch):
    from devenv.contract import Ownership, Target
    from devenv.drivers.libvirt import driver as lv
    from devenv.model import devfile

    stored = _stored_unchecked(tmp_path, victim)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "Devfile").write_text('[machines.vm]\ndriver = "libvirt"\nbox = "old"\n')
    df = devfile.load(tmp_path / "p" / "Devfile")
    target = Target(df.project_id, df.root, df.machines["vm"])
    driver = lv.LibvirtDriver()
    monkeypatch.setattr(lv.LibvirtDriver, "owns", lambda self, handle, target: Ownership.GONE)
    monkeypatch.setattr(lv.LibvirtDriver, "_check_same_host", lambda self, uri: None)
    defined = []
    monkeypatch.setattr(lv.LibvirtDriver, "_define", lambda self, *a, **k: defined.append(a))
    box = BoxArtifact("old", "1", str(stored.file("disk")), None, {"kernel": None})
    with pytest.raises(BoxError, match="backing file"):
        driver.create(target, box)
    assert not (driver.storage_dir(target.resource_name) / "disk.qcow2").exists() and defined == []


def test_the_domain_xml_ends_the_backing_chain_at_the_box_disk(tmp_path):
    """libvirt opens the chain the XML gives (-blockdev): the box disk, then nothing it may name."""
    import xml.etree.ElementTree as ET

    from devenv.contract import Target
    from devenv.drivers.libvirt import driver as lv
    from devenv.model import devfile

    (tmp_path / "Devfile").write_text('[machines.vm]\ndriver = "libvirt"\nbox = "tiny"\n')
    df = devfile.load(tmp_path / "Devfile")
    target = Target(df.project_id, df.root, df.machines["vm"])
    disk = qcow2(tmp_path / "box disk.img")
    folder = tmp_path / "store"
    folder.mkdir()
    box = BoxArtifact("tiny", "1", str(disk), "sha256:x", {"kernel": None})
    kw = dict(target=target, box=box, name="n", uri="qemu:///system", ssh_port=2222, ssh_user="root",
              keys_dir=tmp_path / "k", forwards=[], sync=[])  # fmt: skip
    for with_overlay in (False, True):
        if with_overlay:  # the overlay's own record wins: it is what QEMU must open under it
            other = qcow2(tmp_path / "older.img")
            qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(other), str(folder / "disk.qcow2"))
        xml = lv.LibvirtDriver().domain_xml(folder=folder, **kw)
        el = ET.fromstring(xml).find("devices/disk[@device='disk']")
        chain = el.find("backingStore")
        assert chain.get("type") == "file" and chain.find("format").get("type") == "qcow2"
        assert chain.find("source").get("file") == str(other if with_overlay else disk)
        end = chain.find("backingStore")
        assert end is not None and len(end) == 0 and not end.attrib, "an empty <backingStore/> ends the chain"


def test_libvirt_opens_only_the_chain_the_xml_gives(tmp_path, victim):
    """Real libvirt + QEMU: a box disk whose header names a host file; QEMU never opens that file."""
    libvirt = require_module("libvirt", "pip install 'devenv[libvirt]'")
    from tests.support import missing

    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:
        missing(f"libvirtd (qemu:///system): {exc}")
        return
    from devenv.drivers.libvirt import driver as lv

    os.chmod(tmp_path, 0o755)
    base = qcow2(tmp_path / "base.img")
    qemu_img("rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", str(victim), str(base))  # what a hostile box holds
    overlay = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay))
    name = f"devenv-test-chain-{os.getpid()}"
    backing = lv.LibvirtDriver._backing_xml(tmp_path, BoxArtifact("b", "1", str(base), None, {}))
    xml = (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{overlay}'/>{backing}"
        "<target dev='vda' bus='virtio'/></disk></devices>"
        f"<seclabel type='static' model='dac' relabel='no'><label>+{os.getuid()}:+{os.getgid()}</label></seclabel>"
        "</domain>"
    )
    dom = conn.createXML(xml, 0)  # transient: gone when destroyed
    try:
        pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
        opened = {os.path.realpath(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert str(base) in opened and str(victim) not in opened, opened
    finally:
        dom.destroy()
        conn.close()


# -- 2. VMDK: text descriptors, extents, parents; VDI / VHD ------------------------------------------


def _embedded_two_extents(text: str, victim: Path) -> str:
    line = next(x for x in text.splitlines() if x.startswith("RW "))
    return text.replace(line, f'{line}\nRW 8 FLAT "{victim}" 0')


@pytest.mark.parametrize(
    "case",
    [
        "descriptor-flat",
        "descriptor-sparse",
        "descriptor-relative",
        "sparse-capacity-0",
        "sparse-two-extents",
        "sparse-extent-elsewhere",
        "sparse-flat-extent",
        "sparse-parent",
        "sparse-parent-cid",
        "sparse-vmfs-type",
        "cowd",
        "vdi",
        "vhd",
    ],
)
def test_a_virtualbox_box_whose_disk_reaches_a_host_file_is_refused(tmp_path, victim, case):
    before = digest(victim)
    disk = tmp_path / "box-disk001.vmdk"
    name = "box-disk001.vmdk"
    host_vmdk = vmdk(tmp_path / "host" / "other.vmdk", "monolithicSparse")
    if case.startswith("descriptor"):
        target = {"descriptor-flat": f'FLAT "{victim}" 0', "descriptor-sparse": f'SPARSE "{host_vmdk}"',
                  "descriptor-relative": 'FLAT "../../../../../../host/id_ed25519" 0'}[case]  # fmt: skip
        disk.write_text(f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                        f'createType="monolithicFlat"\nRW 8 {target}\n')  # fmt: skip
    elif case.startswith("sparse"):
        vmdk(disk, "monolithicSparse")
        edits = {
            "sparse-two-extents": lambda t: _embedded_two_extents(t, victim),
            "sparse-extent-elsewhere": lambda t: t.replace('"box-disk001.vmdk"', f'"{host_vmdk}"'),
            "sparse-flat-extent": lambda t: t.replace('SPARSE "box-disk001.vmdk"', f'FLAT "{victim}" 0'),
            "sparse-parent": lambda t: t.replace("parentCID=ffffffff", f'parentCID=12345678\nparentFileNameHint="{host_vmdk}"'),
            "sparse-parent-cid": lambda t: t.replace("parentCID=ffffffff", "parentCID=12345678"),
            "sparse-vmfs-type": lambda t: t.replace('createType="monolithicSparse"', 'createType="vmfs"'),
        }  # fmt: skip
        if case == "sparse-capacity-0":
            # QEMU reads a KDMV header with capacity 0 as a descriptor naming extents elsewhere.
            patch(disk, 12, struct.pack("<Q", 0))
            rewrite_descriptor(disk, lambda t: t.replace('SPARSE "box-disk001.vmdk"', f'FLAT "{victim}" 0'))
        else:
            rewrite_descriptor(disk, edits[case])
    elif case == "cowd":
        disk.write_bytes(b"COWD" + b"\0" * 2044)
    else:
        fmt = {"vdi": "vdi", "vhd": "vpc"}[case]
        name = f"box-disk001.{case}"
        disk = tmp_path / name
        qemu_img("create", "-q", "-f", fmt, str(disk), "1M")
    result = add(vbox_box(tmp_path / "evil.box", {name: disk.read_bytes()}))
    assert_refused(result, victim, before, name, "self-contained")


def test_the_vmdk_repro_flat_descriptor_is_refused_and_the_host_file_is_not_written(tmp_path, victim):
    before = digest(victim)
    desc = f'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 1 FLAT "{victim}" 0\n'
    result = add(vbox_box(tmp_path / "evil.box", {"box-disk001.vmdk": desc.encode()}))
    assert_refused(result, victim, before, "VMDK text descriptor")


@pytest.mark.parametrize("subformat", ["streamOptimized", "monolithicSparse"])
def test_a_good_vmdk_box_is_added_with_devenvs_own_ovf(tmp_path, subformat):
    from devenv.boxes import diskcheck

    disk = vmdk(tmp_path / "box-disk001.vmdk", subformat, size="8M")
    result = add(vbox_box(tmp_path / "g.box", {"box-disk001.vmdk": disk.read_bytes()}), "good")
    assert result.exit_code == 0, result.output
    stored = boxes.find_stored("good", "1", "virtualbox")
    assert stored.file("disk").read_bytes() == disk.read_bytes()
    info = diskcheck.inspect(disk, ("vmdk",), "d")
    assert stored.file("ovf").read_text() == boxfile.render_ovf([("box-disk001.vmdk", info)], name="good-1")
    assert f'ovf:capacity="{8 * 1024 * 1024}"' in stored.file("ovf").read_text()


def test_inspect_rejects_a_symlink_and_never_follows_it(tmp_path, victim):
    from devenv.boxes import diskcheck

    link = tmp_path / "box.img"
    link.symlink_to(qcow2(tmp_path / "real.img"))
    with pytest.raises(BoxError, match="not a regular file"):
        diskcheck.inspect(link, ("qcow2",), "box.img")


# -- 3. the OVF: devenv writes its own; nothing else of the download reaches VirtualBox -------------

HOSTILE_MACHINE = """
  <NetworkSection><Info>n</Info><Network ovf:name="Bridged"/></NetworkSection>
  <VirtualSystem ovf:id="evil"><Info>x</Info>
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:Connection>Bridged</rasd:Connection><rasd:ElementName>eth</rasd:ElementName>
        <rasd:InstanceID>9</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:ElementName>serial</rasd:ElementName><rasd:InstanceID>10</rasd:InstanceID>
        <rasd:ResourceType>21</rasd:ResourceType></Item>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.16-linux" uuid="{00000000-0000-0000-0000-000000000001}" name="evil">
      <Hardware>
        <Network>
          <Adapter slot="1" enabled="true" type="virtio"><BridgedInterface name="eth0"/></Adapter>
          <Adapter slot="2" enabled="true" type="virtio"><NAT><Forwarding name="x" proto="1" hostip="0.0.0.0"
             hostport="2222" guestport="22"/></NAT></Adapter>
        </Network>
        <UART><Port slot="0" enabled="true" IOBase="0x3f8" IRQ="4" path="/root/.bashrc" hostMode="RawFile"/></UART>
        <SharedFolders><SharedFolder name="hostroot" hostPath="/" writable="true" autoMount="true"/></SharedFolders>
      </Hardware>
    </vbox:Machine>
  </VirtualSystem>
"""
NEEDLES = ("hostPath", "RawFile", "BridgedInterface", "0.0.0.0", "Bridged", "vbox:Machine", "SharedFolder", ">21<")


def test_the_downloaded_ovf_with_vbox_machine_settings_is_not_stored(tmp_path):
    disk = vmdk(tmp_path / "d.vmdk").read_bytes()
    ovf = ovf_for("box-disk001.vmdk", "data.vmdk", extra=HOSTILE_MACHINE)
    box = vbox_box(tmp_path / "evil.box", {"box-disk001.vmdk": disk, "data.vmdk": disk}, ovf=ovf)
    result = add(box, "evil")
    assert result.exit_code == 0, result.output
    stored = boxes.find_stored("evil", "1", "virtualbox")
    text = stored.file("ovf").read_text()
    for needle in NEEDLES:
        assert needle not in text, needle
    assert [p.name for p in stored.folder.glob("*.ovf")] == ["box.ovf"]
    assert stored.file("disk2").name == "data.vmdk" and 'ovf:href="data.vmdk"' in text
    boxfile.check_own_ovf(stored.file("ovf"), "stored")  # devenv's own passes its own check
    # VBoxManage (the stand-in, which parses the OVF as VirtualBox does) imports it with both disks.
    env = {**os.environ, "FAKE_VBOX_STATE": str(tmp_path / "vbox.json")}
    r = subprocess.run(
        [str(FAKE_VBOXMANAGE), "import", str(stored.file("ovf")), "--vsys", "0", "--vmname", "base",
         "--basefolder", str(tmp_path / "vms")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    vm = json.loads((tmp_path / "vbox.json").read_text())["vms"][0]
    attached = [a for c in vm["controllers"] for a in c["attachments"].values() if a["type"] == "hdd"]
    assert len(attached) == 2 and vm["nics"].get("2", "none") == "none" and vm["shared"] == []


def test_more_disks_than_devenvs_ovf_holds_are_refused(tmp_path):
    disk = vmdk(tmp_path / "d.vmdk").read_bytes()
    disks = {f"d{i}.vmdk": disk for i in range(5)}
    result = add(vbox_box(tmp_path / "many.box", disks))
    assert result.exit_code == 7 and "at most 4" in result.output, result.output
    assert boxes.list_stored() == []


def test_a_stored_ovf_from_an_older_devenv_is_refused_before_import(tmp_path, monkeypatch):
    """A box stored before this fix kept the downloaded OVF: the driver refuses it, VBoxManage never runs import."""
    from devenv.drivers.virtualbox import driver as vb

    staging = tmp_path / "staging"
    staging.mkdir()
    vmdk(staging / "box-disk001.vmdk")
    (staging / "box.ovf").write_text(ovf_for("box-disk001.vmdk", extra=HOSTILE_MACHINE))
    files = {"ovf": staging / "box.ovf", "disk": staging / "box-disk001.vmdk"}
    stored = boxes.store_box("old", "1", "virtualbox", files, {"ssh_user": "root"})
    log = tmp_path / "calls.log"
    monkeypatch.setenv("VBOXMANAGE", str(FAKE_VBOXMANAGE))
    monkeypatch.setenv("FAKE_VBOX_STATE", str(tmp_path / "vbox.json"))
    monkeypatch.setenv("FAKE_VBOX_LOG", str(log))
    box = BoxArtifact("old", "1", str(stored.file("ovf")), None, {"base_vm": "devenv-base-old-1"})
    with pytest.raises(BoxError, match="not one devenv wrote") as exc:
        vb.VirtualBoxDriver().ensure_base(box)
    assert "add it again" in exc.value.hint
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert not [c for c in calls if c[0] == "import"], calls


@pytest.mark.parametrize(
    "extra",
    [
        '<VirtualSystem ovf:id="x"><vbox:Machine/></VirtualSystem>',
        '<VirtualSystem ovf:id="x"><VirtualHardwareSection><Item><rasd:ResourceType>23</rasd:ResourceType>'
        "</Item></VirtualHardwareSection></VirtualSystem>",
        '<VirtualSystem ovf:id="x"><VirtualHardwareSection><Item><rasd:ResourceType>10</rasd:ResourceType>'
        "<rasd:Connection>HostOnly</rasd:Connection></Item></VirtualHardwareSection></VirtualSystem>",
    ],
)
def test_check_own_ovf_allows_only_what_devenv_writes(tmp_path, extra):
    p = tmp_path / "box.ovf"
    p.write_text(ovf_for("box-disk001.vmdk", extra=extra))
    with pytest.raises(BoxError, match="not one devenv wrote"):
        boxfile.check_own_ovf(p, "box")
    p.write_text(ovf_for("/etc/passwd"))
    with pytest.raises(BoxError, match="not a plain name"):
        boxfile.check_own_ovf(p, "box")


def test_a_box_built_for_virtualbox_gets_devenvs_ovf(tmp_path):
    """`box build --output vagrant` writes its .box with render_ovf: it adds back through the checks."""
    from devenv.boxes import diskcheck

    text = boxfile.render_ovf(
        [("box-disk001.vmdk", diskcheck.DiskInfo("vmdk", 4096, "streamOptimized"))], name="tiny-1"
    )
    assert 'ovf:capacity="4096"' in text and "vmdk.html#streamOptimized" in text
    p = tmp_path / "box.ovf"
    p.write_text(text)
    boxfile.check_own_ovf(p, "built")
