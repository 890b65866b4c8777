"""Box disks are hostile input: checked before they are stored, and again before QEMU opens one.

A disk image format can name other files. A qcow2 header can name a backing file (any host
path, or a `json:` / protocol filename), an external data file (the guest's writes go there) or
an encryption scheme; a VMDK can be a plain-text descriptor whose extents are host files (`RW 1
FLAT "/home/u/.ssh/id_ed25519"`), or a sparse VMDK whose embedded descriptor lists extents (QEMU
reads a sparse header with capacity 0 as a descriptor file); a differencing VDI or VHD names a
parent. QEMU and VirtualBox open whatever the image names, with the user's rights.

So a box disk is accepted only when it is self-contained, which devenv checks itself, from the
bytes, without trusting a parser of the format:

- qcow2 (libvirt boxes, cloud images): version 2 or 3, no backing file, no encryption, no
  incompatible feature but the harmless ones (dirty, compression type, extended L2) -- so no
  external data file -- and no header extension that names a file or a key;
- VMDK (VirtualBox boxes): the binary sparse format only (magic KDMV: monolithicSparse or
  streamOptimized, what VBoxManage export and `qemu-img convert -O vmdk` write) with a capacity,
  and an embedded descriptor, when there is one, of exactly one SPARSE extent with a plain file
  name (the image itself), no parent; never a text descriptor, never a VMware 3 (COWD) image;
- raw (cloud images only): any bytes, always opened with `-f raw`, which never opens another file.

VDI and VHD disks are refused: devenv writes the OVF a VirtualBox box is imported from, and it
describes VMDK disks only (what every Vagrant virtualbox box carries).

When qemu-img is installed its `info --output=json` (with the format given, never probed) must
agree: the same format, no backing file, no data file, a single extent that is the file itself.
It runs only after devenv's own check passed, so it never opens a file a disk names.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from devenv.errors import BoxError

QCOW2_MAGIC = b"QFI\xfb"
VMDK_MAGIC = b"KDMV"
VMDK3_MAGIC = b"COWD"
VDI_SIGNATURE = 0xBEDA107F
# qcow2 incompatible feature bits: 0 dirty, 1 corrupt, 2 external data file, 3 compression type,
# 4 extended L2 entries. Only those that change nothing about which files are opened are allowed.
QCOW2_INCOMPATIBLE_OK = (1 << 0) | (1 << 3) | (1 << 4)
# qcow2 header extensions devenv refuses: they name a file or carry a key.
QCOW2_EXT_REFUSED = {
    0xE2792ACA: "a backing file format",
    0x0537BE77: "full disk encryption",
    0x44415441: "an external data file",
}
MAX_DESCRIPTOR = 1024 * 1024
HINT = (
    "devenv takes a box disk that names no other file (no backing file, data file, extent or parent); "
    "nothing was added or started: get the box from its publisher again"
)


@dataclass(frozen=True)
class DiskInfo:
    """A checked disk: its format and virtual size in bytes."""

    format: str
    virtual_size: int
    subformat: str = ""  # VMDK: monolithicSparse or streamOptimized


def _refuse(what: str, why: str) -> BoxError:
    return BoxError(f"{what}: {why}: refused, a box disk must be self-contained", hint=HINT)


def sniff(head: bytes, tail: bytes = b"") -> str:
    """The format a disk's first bytes (and last 512, for VHD's footer) say it is: 'raw' if none."""
    if head[:4] == QCOW2_MAGIC:
        return "qcow2"
    if head[:4] == VMDK_MAGIC:
        return "vmdk"
    if head[:4] == VMDK3_MAGIC:
        return "vmdk3"
    if len(head) >= 72 and struct.unpack("<I", head[64:68])[0] == VDI_SIGNATURE:
        return "vdi"
    if head[:8] == b"conectix" or tail[:8] == b"conectix":
        return "vhd"
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if head[:4] == b"QED\x00":
        return "qed"
    if head[:6] == b"LUKS\xba\xbe":
        return "luks"
    text = head[:1024].lstrip()
    if text.startswith(b"# Disk DescriptorFile") or re.search(rb"(?m)^\s*createType\s*=", head[:4096]):
        return "vmdk-descriptor"
    return "raw"


def _read_at(f, offset: int, size: int) -> bytes:  # type: ignore[no-untyped-def]
    f.seek(offset)
    return f.read(size)


def _check_qcow2(f, size: int, what: str) -> DiskInfo:  # type: ignore[no-untyped-def]
    head = _read_at(f, 0, 112)
    if len(head) < 72:
        raise _refuse(what, "its qcow2 header is truncated")
    version, backing_offset, backing_size, cluster_bits, virtual_size, crypt = struct.unpack(">IQIIQI", head[4:36])
    if version not in (2, 3):
        raise _refuse(what, f"it is qcow2 version {version}; devenv reads versions 2 and 3")
    if backing_offset or backing_size:
        name = _read_at(f, backing_offset, min(backing_size, 1024)) if backing_offset else b""
        shown = name.decode("utf-8", "replace")
        raise _refuse(what, f"the qcow2 disk names a backing file ({shown!r}), which QEMU would open on this host")
    if crypt:
        raise _refuse(what, "the qcow2 disk is encrypted")
    if not 9 <= cluster_bits <= 21:
        raise _refuse(what, f"its qcow2 cluster size 2^{cluster_bits} is invalid")
    if virtual_size <= 0:
        raise _refuse(what, "the qcow2 disk has no size")
    ext_start = 72
    if version == 3:
        if len(head) < 104:
            raise _refuse(what, "its qcow2 header is truncated")
        incompatible = struct.unpack(">Q", head[72:80])[0]
        if incompatible & (1 << 2):
            raise _refuse(what, "the qcow2 disk keeps its data in an external data file, which QEMU would open")
        if incompatible & (1 << 1):
            raise _refuse(what, "the qcow2 disk is marked corrupt")
        if incompatible & ~QCOW2_INCOMPATIBLE_OK:
            raise _refuse(what, f"the qcow2 disk uses unknown incompatible features (0x{incompatible:x})")
        ext_start = struct.unpack(">I", head[100:104])[0]
        if not 104 <= ext_start <= 1 << cluster_bits:
            raise _refuse(what, "its qcow2 header length is invalid")
    # Header extensions: within the first cluster, each 8-byte aligned, ended by type 0.
    limit = min(1 << cluster_bits, size)
    pos = ext_start
    while pos + 8 <= limit:
        ext_type, ext_len = struct.unpack(">II", _read_at(f, pos, 8))
        if ext_type == 0:
            break
        if ext_type in QCOW2_EXT_REFUSED:
            raise _refuse(what, f"the qcow2 disk carries {QCOW2_EXT_REFUSED[ext_type]}")
        pos += 8 + ((ext_len + 7) & ~7)
    return DiskInfo("qcow2", virtual_size)


_EXTENT_RE = re.compile(r'(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\S+)(?:\s+"([^"]*)")?(?:\s+(\d+))?\s*')


def _check_vmdk(f, size: int, path: Path, what: str) -> DiskInfo:  # type: ignore[no-untyped-def]
    head = _read_at(f, 0, 512)
    if len(head) < 77:
        raise _refuse(what, "its VMDK header is truncated")
    _magic, version, _flags, capacity, _grain, desc_offset, desc_size = struct.unpack("<4sIIQQQQ", head[:44])
    if version not in (1, 2, 3):
        raise _refuse(what, f"it is VMDK sparse version {version}; devenv reads versions 1 to 3")
    if capacity == 0:
        # QEMU reads such a file as a descriptor naming extents elsewhere.
        raise _refuse(what, "the sparse VMDK has no capacity (it would be read as a descriptor naming other files)")
    subformat = "monolithicSparse"
    if desc_offset or desc_size:
        if not desc_offset or not desc_size or desc_size * 512 > MAX_DESCRIPTOR:
            raise _refuse(what, "its embedded VMDK descriptor is invalid")
        text = _read_at(f, desc_offset * 512, desc_size * 512).split(b"\0", 1)[0].decode("utf-8", "replace")
        extents = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            m = _EXTENT_RE.fullmatch(line)
            if m is not None:
                extents.append(m)
                continue
            key, eq, value = line.partition("=")
            key, value = key.strip(), value.strip().strip('"')
            if not eq:
                raise _refuse(what, f"its embedded VMDK descriptor has a line devenv does not read: {line[:80]!r}")
            if key == "createType":
                if value not in ("monolithicSparse", "streamOptimized"):
                    raise _refuse(what, f"its VMDK descriptor says createType={value!r}, not a self-contained disk")
                subformat = value
            elif key == "parentCID" and value.lower() != "ffffffff":
                raise _refuse(what, "the VMDK is a delta disk with a parent")
            elif key.startswith("parentFileNameHint"):
                raise _refuse(what, "the VMDK names a parent disk")
        if len(extents) != 1:
            raise _refuse(what, f"its VMDK descriptor lists {len(extents)} extents; a self-contained disk has one")
        kind, name = extents[0].group(3), extents[0].group(4) or ""
        if kind != "SPARSE" or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise _refuse(what, f"its VMDK extent is {kind} {name!r}, not the sparse image itself")
    return DiskInfo("vmdk", capacity * 512, subformat)


def _qemu_img_agrees(path: Path, info: DiskInfo, what: str) -> None:
    """Confirm devenv's reading with qemu-img (when installed), the format given, never probed."""
    import shutil
    import subprocess

    exe = shutil.which("qemu-img")
    if exe is None:
        return
    try:
        r = subprocess.run(
            [exe, "info", "--output=json", "-f", info.format, str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _refuse(what, f"qemu-img info could not read the disk ({exc})") from None
    if r.returncode != 0:
        raise _refuse(what, f"qemu-img cannot read it as {info.format}: {r.stderr.strip()[-300:]}")
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        raise _refuse(what, "qemu-img info gave no readable answer") from None
    data = ((doc.get("format-specific") or {}).get("data")) or {}
    if doc.get("format") != info.format:
        raise _refuse(what, f"qemu-img reads it as {doc.get('format')!r}, not {info.format}")
    if doc.get("backing-filename") or doc.get("full-backing-filename"):
        raise _refuse(what, "qemu-img reports a backing file")
    if doc.get("encrypted") or data.get("encrypt"):
        raise _refuse(what, "qemu-img reports an encrypted disk")
    if info.format == "qcow2" and data.get("data-file"):
        raise _refuse(what, "qemu-img reports an external data file")
    if info.format == "vmdk":
        extents = data.get("extents") or []
        files = {str(e.get("filename")) for e in extents if isinstance(e, dict)}
        if len(extents) != 1 or files != {str(path)}:
            raise _refuse(what, "qemu-img reports extents other than the file itself")


def inspect(path: Path, formats: tuple[str, ...], what: str) -> DiskInfo:
    """Check that `path` is a regular file holding a self-contained disk of one of `formats`.

    A BoxError names what was found otherwise. Nothing the disk names is ever opened.
    """
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise BoxError(f"{what}: cannot read the disk: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(what, "the disk is not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise BoxError(f"{what}: cannot read the disk: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        head = f.read(4096)
        tail = _read_at(f, st.st_size - 512, 512) if st.st_size >= 1024 else b""
        found = sniff(head, tail)
        if found not in formats:
            names = {
                "vmdk-descriptor": "a VMDK text descriptor (its extents name other files)",
                "vmdk3": "a VMware 3 (COWD) disk",
                "raw": "not a disk image devenv recognises",
                "vdi": "a VDI disk (devenv imports VirtualBox boxes with VMDK disks only)",
                "vhd": "a VHD disk (devenv imports VirtualBox boxes with VMDK disks only)",
            }
            raise _refuse(what, f"the disk is {names.get(found, found)}, not {' or '.join(formats)}")
        if found == "qcow2":
            info = _check_qcow2(f, st.st_size, what)
        elif found == "vmdk":
            info = _check_vmdk(f, st.st_size, path, what)
        else:  # raw: opened only with -f raw, which reads these bytes and nothing else
            return DiskInfo("raw", st.st_size)
    _qemu_img_agrees(Path(os.path.abspath(path)), info, what)
    return info
