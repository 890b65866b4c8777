"""The VM half of the benchmark: `devenv up` of a libvirt machine to SSH against libvirt-python
booting the same domain by hand, and `devenv destroy` against destroy + undefine.

The guest is the tiny test guest (tests/guest/build-tiny-guest.sh: Debian's cloud kernel,
busybox, dropbear), the only one that boots in seconds under QEMU's emulation here. The raw
column boots the very domain devenv defined (its XML with a new name, a fresh overlay on the
same box disk, another SSH port) and stops the clock at the SSH banner, as devenv's own wait
does; devenv's time also covers reading the Devfile, the seed ISO and the overlay.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
URI = "qemu:///system"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_banner(port: int, timeout: float = 300) -> None:
    from devenv.drivers.hostports import ssh_banner  # the same probe devenv's own wait uses

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ssh_banner(port):
            return
        time.sleep(0.25)
    raise SystemExit(f"the raw domain did not show an SSH banner on port {port} within {timeout:.0f}s")


class RawDomain:
    """devenv's domain XML, re-pointed at files of its own, booted with libvirt-python."""

    def __init__(self, conn, template_xml: str, folder: Path, box_disk: str) -> None:
        self.conn = conn
        self.folder = folder
        self.box_disk = box_disk
        self.name = "devenv-bench-raw-vm"
        folder.mkdir(parents=True, exist_ok=True)
        root = ET.fromstring(template_xml)
        root.find("name").text = self.name
        for tag in ("uuid", "metadata", "title"):
            el = root.find(tag)
            if el is not None:
                root.remove(el)
        for disk in root.iter("disk"):
            src = disk.find("source")
            if disk.get("device") == "disk":
                src.set("file", str(folder / "disk.qcow2"))
            elif src is not None and src.get("file", "").endswith("seed.iso"):
                shutil.copy(src.get("file"), folder / "seed.iso")
                src.set("file", str(folder / "seed.iso"))
        for serial in root.iter("serial"):
            src = serial.find("source")
            if src is not None:
                src.set("path", str(folder / "console.log"))
        # The qemu:commandline netdev carries the SSH forward: give it a port of its own.
        self.port = _free_port()
        for arg in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg"):
            fwd = f"hostfwd=tcp:127.0.0.1:{self.port}-:22"
            arg.set("value", re.sub(r"hostfwd=tcp:127\.0\.0\.1:\d+-:22", fwd, arg.get("value")))
        ET.register_namespace("qemu", "http://libvirt.org/schemas/domain/qemu/1.0")
        self.xml = ET.tostring(root, encoding="unicode")

    def up(self) -> None:
        disk = self.folder / "disk.qcow2"
        disk.unlink(missing_ok=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", self.box_disk, str(disk)], check=True
        )
        dom = self.conn.defineXML(self.xml)
        dom.create()
        _wait_banner(self.port)

    def destroy(self) -> None:
        import libvirt

        try:
            dom = self.conn.lookupByName(self.name)
        except libvirt.libvirtError:
            return
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        (self.folder / "disk.qcow2").unlink(missing_ok=True)


def measure(
    devenv: list[str], env: dict, work: Path, runs: int, add: Callable[[str, str, float], None], timed
) -> str | None:
    """Add the VM rows; returns why they were left out, or None."""
    try:
        import libvirt
    except ImportError:
        return "libvirt-python is not installed (pip install -e .[libvirt])"
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions; no stderr noise
    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        return f"libvirtd does not answer at {URI} ({exc}); scripts/libvirt.sh starts it"
    guest = work / "tiny-guest"
    build = ["bash", str(REPO / "tests/guest/build-tiny-guest.sh"), str(guest)]
    r = subprocess.run(build, capture_output=True, text=True)
    if r.returncode != 0:
        return f"the tiny guest could not be built: {r.stderr.strip().splitlines()[-1:]}"
    # The guest as box tiny-vm@1 in the benchmark's own box store (DEVENV_HOME).
    store = (
        f"from pathlib import Path; from devenv import boxes; g = Path({str(guest)!r}); "
        "boxes.store_box('tiny-vm', '1', 'libvirt', {'disk': g / 'disk.qcow2', 'kernel': g / 'vmlinuz', "
        "'initrd': g / 'initrd.img'}, {'cmdline': (g / 'cmdline').read_text().strip(), 'ssh_user': 'root', "
        "'sync': ['rsync']})"
    )
    subprocess.run([sys.executable, "-c", store], env=env, check=True)
    proj = work / "vm"
    proj.mkdir()
    (proj / "Devfile").write_text('[machines.v]\ndriver = "libvirt"\nbox = "tiny-vm@1"\nmemory = "256MiB"\n')
    # One warm-up boot gives the raw column devenv's exact domain to boot.
    before = {d.name() for d in conn.listAllDomains(0)}
    subprocess.run([*devenv, "up"], cwd=proj, env=env, check=True, capture_output=True)
    (dom_name,) = {d.name() for d in conn.listAllDomains(0)} - before
    template = conn.lookupByName(dom_name).XMLDesc(0)
    box_disk = str(Path(env["DEVENV_HOME"]) / "boxes" / "tiny-vm" / "1" / "libvirt" / "disk.qcow2")
    raw = RawDomain(conn, template, work / "raw-vm", box_disk)  # copies the seed: before destroy
    subprocess.run([*devenv, "destroy", "-f"], cwd=proj, env=env, check=True, capture_output=True)
    try:
        for _ in range(runs):
            add("VM up to SSH (libvirt, emulated)", "devenv", timed([*devenv, "up"], proj, env))
            t0 = time.perf_counter()
            raw.up()
            add("VM up to SSH (libvirt, emulated)", "raw", time.perf_counter() - t0)
            add("VM destroy", "devenv", timed([*devenv, "destroy", "-f"], proj, env))
            t0 = time.perf_counter()
            raw.destroy()
            add("VM destroy", "raw", time.perf_counter() - t0)
    finally:
        raw.destroy()
        subprocess.run([*devenv, "destroy", "-f"], cwd=proj, env=env, capture_output=True)
    return None
