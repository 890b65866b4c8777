"""Vagrant-compatible .box archives and box catalogs.

A .box is a tar (optionally gzip) with metadata.json at its root plus the provider's files.
For the libvirt provider (vagrant-libvirt's format): box.img (qcow2), metadata.json
{"provider": "libvirt", "format": "qcow2", "virtual_size": GB} and a Vagrantfile; devenv adds
vmlinuz/initrd.img for direct kernel boot and points the Vagrantfile at them.
A catalog is Vagrant's JSON: {"name", "versions": [{"version", "providers": [{"name", "url",
"checksum_type", "checksum"}]}]}.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from devenv import boxes, ui
from devenv.errors import BoxError

LIBVIRT_VAGRANTFILE = """\
# Written by devenv: boots the box's own kernel and initrd (direct kernel boot).
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "kvm"
    libvirt.kernel = File.expand_path("vmlinuz", __dir__)
    libvirt.initrd = File.expand_path("initrd.img", __dir__)
    libvirt.cmd_line = {cmdline}
  end
end
"""


def _virtual_size_gb(disk: Path) -> int:
    import subprocess

    r = subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        return 1
    return max(1, -(-json.loads(r.stdout)["virtual-size"] // 1024**3))


def write_libvirt_box(stored: boxes.StoredBox, out: Path) -> Path:
    """Pack a stored libvirt box as a Vagrant .box (tar.gz), written atomically."""
    disk = stored.file("disk")
    if disk is None:
        raise BoxError(f"box {stored.name}@{stored.version} has no disk to pack")
    meta = {"provider": "libvirt", "format": "qcow2", "virtual_size": _virtual_size_gb(disk)}
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=1) as tar, tempfile.TemporaryDirectory() as d:
        mp = Path(d) / "metadata.json"
        mp.write_text(json.dumps(meta) + "\n")
        tar.add(mp, "metadata.json")
        vf = Path(d) / "Vagrantfile"
        vf.write_text(LIBVIRT_VAGRANTFILE.format(cmdline=json.dumps(stored.meta.get("cmdline", ""))))
        tar.add(vf, "Vagrantfile")
        info = Path(d) / "devenv.json"
        info.write_text(json.dumps({k: v for k, v in stored.meta.items() if k != "files"}, indent=2) + "\n")
        tar.add(info, "devenv.json")
        tar.add(disk, "box.img")
        for key, arc in (("kernel", "vmlinuz"), ("initrd", "initrd.img")):
            f = stored.file(key)
            if f is not None:
                tar.add(f, arc)
    tmp.replace(out)
    return out


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_checksum(text: str | None) -> tuple[str, str] | None:
    """'sha256:HEX' or a bare sha256 HEX -> (algo, hex)."""
    if not text:
        return None
    algo, _, value = text.partition(":") if ":" in text else ("sha256", "", text)
    algo = algo.lower()
    if algo not in ("sha256", "sha512", "sha1", "md5"):
        raise BoxError(f"unsupported checksum type '{algo}'", hint="use sha256:HEX")
    return algo, value.lower()


def fetch(url_or_path: str, dest: Path) -> Path:
    """A local path or a file:// / http(s):// URL, downloaded to a temp file first (no partial file)."""
    parsed = urllib.parse.urlparse(url_or_path)
    if parsed.scheme in ("", "file"):
        src = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else url_or_path).expanduser()
        if not src.is_file():
            raise BoxError(f"box file not found: {src}")
        return src
    if parsed.scheme not in ("http", "https"):
        raise BoxError(f"cannot fetch '{url_or_path}': only paths, file://, http:// and https:// are supported")
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with ui.progress(None, f"downloading {url_or_path}"):
            with urllib.request.urlopen(url_or_path, timeout=60) as r, open(tmp, "wb") as f:
                expected = r.headers.get("Content-Length")
                n = 0
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    n += len(chunk)
                if expected is not None and n != int(expected):
                    raise BoxError(
                        f"download of {url_or_path} was interrupted ({n} of {expected} bytes)", hint="try again"
                    )
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BoxError(f"cannot download {url_or_path}: {exc}", hint="check the URL and the network") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


def verify(path: Path, checksum: tuple[str, str] | None, what: str) -> str:
    digest = _digest(path, "sha256")
    if checksum is not None:
        algo, expected = checksum
        actual = digest if algo == "sha256" else _digest(path, algo)
        if actual != expected:
            raise BoxError(
                f"checksum mismatch for {what}: expected {algo}:{expected}, got {algo}:{actual}; the box was not added",
                hint="the file is corrupt or not the one published: download it again or check the checksum",
            )
    return digest


def add_box_file(path: Path, *, name: str, version: str, checksum: str | None = None) -> boxes.StoredBox:
    """Import a .box file into the box store after verifying its checksum."""
    sha = verify(path, parse_checksum(checksum), str(path))
    with tempfile.TemporaryDirectory(prefix="devenv-boxadd-") as d:
        work = Path(d)
        try:
            with tarfile.open(path) as tar:
                tar.extractall(work, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise BoxError(f"{path} is not a valid .box archive: {exc}") from exc
        meta_path = work / "metadata.json"
        if not meta_path.is_file():
            raise BoxError(f"{path} is not a Vagrant box: no metadata.json at its root")
        meta = json.loads(meta_path.read_text())
        provider = meta.get("provider")
        if provider == "virtualbox":
            return _add_virtualbox(work, path, name=name, version=version, sha=sha)
        if provider != "libvirt":
            raise BoxError(
                f"{path} is a '{provider}' box; devenv adds libvirt and virtualbox boxes",
                hint='run it through the Vagrant bridge (driver = "vagrant") instead',
            )
        files = {"disk": work / "box.img"}
        if not files["disk"].is_file():
            raise BoxError(f"{path}: a libvirt box needs box.img")
        for key, fn in (("kernel", "vmlinuz"), ("initrd", "initrd.img")):
            if (work / fn).is_file():
                files[key] = work / fn
        extra = json.loads((work / "devenv.json").read_text()) if (work / "devenv.json").is_file() else {}
        extra = {k: v for k, v in extra.items() if k in ("cmdline", "ssh_user", "sync", "baked", "description")}
        if "kernel" not in files:
            extra["bootloader"] = True
        extra["source"] = {"file": str(path), "sha256": sha}
        return boxes.store_box(name, version, "libvirt", files, extra)


def add_from_catalog(catalog_ref: str, *, version: str | None = None) -> boxes.StoredBox:
    """Resolve a Vagrant catalog (JSON): the newest (or given) version with a libvirt provider."""
    with tempfile.TemporaryDirectory() as d:
        path = fetch(catalog_ref, Path(d) / "catalog.json")
        try:
            cat = json.loads(Path(path).read_text())
        except ValueError as exc:
            raise BoxError(f"{catalog_ref} is not a box catalog (invalid JSON: {exc})") from exc
        name = cat.get("name", "").replace("/", "-") or "box"
        candidates = []
        for v in cat.get("versions", []):
            for p in v.get("providers", []):
                if p.get("name") == "libvirt" and (version is None or v.get("version") == version):
                    candidates.append((boxes.version_key(str(v["version"])), str(v["version"]), p))
        if not candidates:
            raise BoxError(f"catalog {catalog_ref} has no libvirt box" + (f" at version {version}" if version else ""))
        _, ver, prov = max(candidates, key=lambda c: c[0])
        if not prov.get("checksum"):
            raise BoxError(f"catalog {catalog_ref}: {name}@{ver} has no checksum; devenv adds only verified boxes")
        url = urllib.parse.urljoin(
            catalog_ref if "://" in catalog_ref else Path(catalog_ref).resolve().as_uri(), prov["url"]
        )
        box_path = fetch(url, Path(d) / "download.box")
        checksum = f"{prov.get('checksum_type', 'sha256')}:{prov['checksum']}"
        return add_box_file(Path(box_path), name=name, version=ver, checksum=checksum)


def _add_virtualbox(work: Path, path: Path, *, name: str, version: str, sha: str) -> boxes.StoredBox:
    """The virtualbox provider's layout: an OVF descriptor and the disks it names."""
    import re

    ovfs = sorted(work.glob("*.ovf"))
    if not ovfs:
        raise BoxError(f"{path}: a virtualbox box needs an .ovf descriptor at its root")
    ovf = ovfs[0]
    names = re.findall(r'ovf:href="([^"]+)"', ovf.read_text(errors="replace"))
    disks = [work / n for n in names]
    missing = [n for n, d in zip(names, disks, strict=True) if not d.is_file()]
    if not disks or missing:
        raise BoxError(f"{path}: the OVF names disk files that are not in the box: {', '.join(missing) or '(none)'}")
    files = {"ovf": ovf, "disk": disks[0]}
    for i, d in enumerate(disks[1:], start=2):
        files[f"disk{i}"] = d
    vagrantfile = (work / "Vagrantfile").read_text(errors="replace") if (work / "Vagrantfile").is_file() else ""
    extra = json.loads((work / "devenv.json").read_text()) if (work / "devenv.json").is_file() else {}
    meta = {k: v for k, v in extra.items() if k in ("ssh_user", "guest_additions", "baked", "description")}
    meta.setdefault("ssh_user", "vagrant" if "vagrant" in vagrantfile or not extra else "root")
    meta.setdefault("guest_additions", False)
    meta["source"] = {"file": str(path), "sha256": sha}
    return boxes.store_box(name, version, "virtualbox", files, meta)


OVF_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by devenv: one BIOS-bootable disk (SYSLINUX) on an IDE controller, NAT networking. -->
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:id="file1" ovf:href="{disk}"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1"
        ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks</Info>
    <Network ovf:name="NAT"><Description>NAT</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A devenv box</Info>
    <OperatingSystemSection ovf:id="96">
      <Info>Guest OS</Info><Description>Debian_64</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType></System>
      <Item><rasd:Caption>1 virtual CPU</rasd:Caption><rasd:ElementName>1 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:Caption>1024 MB of memory</rasd:Caption>
        <rasd:ElementName>1024 MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:Caption>ideController0</rasd:Caption>
        <rasd:ElementName>ideController0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>PIIX4</rasd:ResourceSubType><rasd:ResourceType>5</rasd:ResourceType></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>Ethernet adapter on NAT</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection><rasd:ElementName>Ethernet adapter on NAT</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceSubType>virtio</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:Caption>disk1</rasd:Caption>
        <rasd:ElementName>disk1</rasd:ElementName><rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def write_virtualbox_box(stored: boxes.StoredBox, out: Path) -> Path:
    """Pack a libvirt box for VirtualBox: its root put on a BIOS-bootable disk (SYSLINUX), as VMDK + OVF.

    Verified here by booting the same disk under QEMU without direct kernel boot; VirtualBox itself
    cannot run on our machines.
    """
    import subprocess

    from devenv import biosdisk

    disk, kernel, initrd = stored.file("disk"), stored.file("kernel"), stored.file("initrd")
    if disk is None or kernel is None or initrd is None:
        raise BoxError(f"box {stored.name}@{stored.version}: a VirtualBox box is made from a libvirt box with a kernel")
    cmdline = stored.meta.get("cmdline", "").replace("root=/dev/vda", "root=LABEL=root")
    if "root=" not in cmdline:
        cmdline = ("root=LABEL=root rw " + cmdline).strip()
    with tempfile.TemporaryDirectory(dir=out.parent) as d:
        work = Path(d)
        root = work / "root.raw"
        r = subprocess.run(
            ["qemu-img", "convert", "-q", "-O", "raw", str(disk), str(root)], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise BoxError(f"qemu-img convert failed: {r.stderr.strip()}")
        raw = work / "bios.raw"
        biosdisk.make_bios_disk(root, kernel, initrd, cmdline, raw)
        root.unlink()
        vmdk = work / "box-disk001.vmdk"
        r = subprocess.run(
            ["qemu-img", "convert", "-q", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(vmdk)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise BoxError(f"qemu-img convert to vmdk failed: {r.stderr.strip()}")
        capacity = raw.stat().st_size
        raw.unlink()
        (work / "box.ovf").write_text(
            OVF_TEMPLATE.format(disk=vmdk.name, capacity=capacity, name=f"{stored.name}-{stored.version}")
        )
        (work / "metadata.json").write_text(json.dumps({"provider": "virtualbox"}) + "\n")
        (work / "Vagrantfile").write_text('Vagrant.configure("2") do |config|\n  config.vm.base_mac = nil\nend\n')
        extra = {k: v for k, v in stored.meta.items() if k in ("baked", "description")}
        (work / "devenv.json").write_text(json.dumps({**extra, "ssh_user": "root", "guest_additions": False}) + "\n")
        tmp = out.with_name(f".{out.name}.tmp")
        with tarfile.open(tmp, "w") as tar:  # VMDK is compressed already
            for name in ("metadata.json", "box.ovf", vmdk.name, "Vagrantfile", "devenv.json"):
                tar.add(work / name, name)
        tmp.replace(out)
    return out
