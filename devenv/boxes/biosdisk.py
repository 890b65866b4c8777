"""A BIOS-bootable disk from a kernel, an initrd and an ext4 root image — without mounting anything.

Hypervisors without direct kernel boot (VirtualBox) need a bootloader on the disk. Layout: an MBR
with SYSLINUX's boot code, partition 1 a small FAT file system holding SYSLINUX, the kernel and
the initrd (written with mtools: no mount, no loop device), partition 2 the ext4 root (label
`root`, found by the initrd with root=LABEL=root whatever the disk controller is called).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from devenv.errors import BoxError
from devenv.masking import tail

SECTOR = 512
ALIGN = 2048  # sectors: 1 MiB alignment, as partitioning tools do
MBR_CANDIDATES = ("/usr/lib/syslinux/mbr/mbr.bin", "/usr/lib/SYSLINUX/mbr.bin", "/usr/share/syslinux/mbr.bin")
TOOLS = {"syslinux": "syslinux", "mcopy": "mtools", "mkfs.vfat": "dosfstools", "sfdisk": "fdisk"}


def _run(argv: list[str], what: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise BoxError(f"{what} failed: {tail((r.stderr or r.stdout).strip(), 500)}")


def check_tools() -> None:
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing or not any(Path(p).is_file() for p in MBR_CANDIDATES):
        pkgs = sorted(
            set(missing) | ({"syslinux-common"} if not any(Path(p).is_file() for p in MBR_CANDIDATES) else set())
        )
        raise BoxError(
            "a bootable disk needs SYSLINUX and partitioning tools", hint=f"apt-get install {' '.join(pkgs)}"
        )


def _sectors(nbytes: int) -> int:
    return -(-nbytes // (ALIGN * SECTOR)) * ALIGN  # round up to whole MiB


def make_bios_disk(root_img: Path, kernel: Path, initrd: Path, cmdline: str, out: Path) -> None:
    """Write `out` (raw): MBR + FAT boot partition (SYSLINUX, kernel, initrd) + the ext4 root image."""
    check_tools()
    work = out.parent
    boot = work / "boot.fat"
    cfg = work / "syslinux.cfg"
    cfg.write_text(
        f"DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n  APPEND initrd=initrd.img {cmdline}\n"
    )
    boot_bytes = kernel.stat().st_size + initrd.stat().st_size + 8 * 1024 * 1024
    boot_sectors = _sectors(boot_bytes)
    _run(["mkfs.vfat", "-n", "BOOT", "-C", str(boot), str(boot_sectors * SECTOR // 1024)], "mkfs.vfat")
    for f, name in ((kernel, "vmlinuz"), (initrd, "initrd.img"), (cfg, "syslinux.cfg")):
        _run(["mcopy", "-i", str(boot), str(f), f"::/{name}"], "mcopy")
    _run(["syslinux", "--install", str(boot)], "syslinux --install")
    root_sectors = _sectors(root_img.stat().st_size)
    p1, p2 = ALIGN, ALIGN + boot_sectors
    total = (p2 + root_sectors + ALIGN) * SECTOR
    with open(out, "wb") as f:
        f.truncate(total)
    layout = (
        f"label: dos\nstart={p1}, size={boot_sectors}, type=c, bootable\nstart={p2}, size={root_sectors}, type=83\n"
    )
    r = subprocess.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", str(out)], input=layout, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise BoxError(f"sfdisk failed: {tail(r.stderr.strip(), 500)}")
    mbr = next(Path(p) for p in MBR_CANDIDATES if Path(p).is_file()).read_bytes()[:440]
    with open(out, "r+b") as f:
        f.write(mbr)  # boot code only: the partition table sfdisk wrote starts at byte 446
        for src, start in ((boot, p1), (root_img, p2)):
            f.seek(start * SECTOR)
            with open(src, "rb") as s:
                shutil.copyfileobj(s, f, 1 << 20)
    boot.unlink()
    cfg.unlink()
