"""Which machines' disks are built on a stored box: qcow2 backing files, read from the header.

A libvirt machine's disk is a qcow2 overlay on its box's disk for its whole life: replacing or
removing the box's file under it corrupts the machine. The store asks here before it does either.
(diskcheck.py checks disks that come from outside; this reads devenv's own overlays.)
"""

from __future__ import annotations

from pathlib import Path


def qcow2_backing(path: Path) -> str | None:
    """The backing file a qcow2 image names in its header, or None (no backing file, not qcow2)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != b"QFI\xfb":
                return None
            offset, size = struct.unpack(">QI", head[8:20])
            if not offset or not size or size > 4096:
                return None
            f.seek(offset)
            return f.read(size).decode("utf-8", "replace")
    except OSError:
        return None


def disk_users(folder: Path) -> list[str]:
    """The libvirt machines whose disk is an overlay on a file in `folder` (a stored box version)."""
    from devenv.state import data_dir

    folder = folder.resolve()
    users = []
    for overlay in sorted((data_dir() / "libvirt").glob("*/disk.qcow2")):
        backing = qcow2_backing(overlay)
        if backing and folder in Path(backing).resolve().parents:
            users.append(overlay.parent.name)
    return users
