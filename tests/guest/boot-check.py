#!/usr/bin/env python3
"""Boot the tiny guest (tests/guest/build-tiny-guest.sh) under libvirt and prove SSH works.

    .venv/bin/python tests/guest/boot-check.py GUESTDIR [--keep] [--no-restart] [--machine q35|pc] [--cdrom-bus scsi|ide]

Steps, each timed: make an ed25519 client key and an ed25519 host key (ssh-keygen), a NoCloud
`cidata` seed ISO (genisoimage), a qcow2 overlay on GUESTDIR/disk.qcow2 (the base is never
written); define a TCG domain on qemu:///system (direct kernel boot, virtio disk, virtio-scsi cdrom,
virtio-rng, guest-agent channel, serial console to a file, QEMU user networking with SSH forwarded
from 127.0.0.1:PORT); start it, wait for DEVENV-GUEST-READY on the serial log, ssh in with the host
key pinned (StrictHostKeyChecking=yes), ping the guest agent, write a file, ACPI shutdown, start
again and check the file survived (--no-restart skips that), shut down, undefine, delete.

Network traffic goes only to 127.0.0.1 (the forward). The guest's user network is created with
restrict=on: it can reach neither the host nor anything beyond; forwards still work.
Needs root (qemu:///system) and libvirt-python (pip install libvirt-python).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt
import libvirt_qemu

URI = "qemu:///system"
MARKER = "DEVENV-GUEST-READY"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_hw_virt() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


def make_seed(work: Path, hostname: str, instance_id: str, client_pub: str, host_key: Path) -> Path:
    src = work / "seed"
    src.mkdir()
    (src / "meta-data").write_text(f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n")
    key_block = "".join(f"    {line}\n" for line in host_key.read_text().splitlines())
    (src / "user-data").write_text(
        "#cloud-config\n"
        "ssh_authorized_keys:\n"
        f"  - {client_pub}\n"
        "ssh_keys:\n"
        "  ed25519_private: |\n"
        f"{key_block}"
        f"  ed25519_public: {host_key.with_suffix('.pub').read_text().strip()}\n"
    )
    iso = work / "seed.iso"
    subprocess.run(
        [
            "genisoimage",
            "-quiet",
            "-output",
            str(iso),
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
            str(src / "user-data"),
            str(src / "meta-data"),
        ],
        check=True,
    )
    return iso


def domain_xml(
    name: str,
    guest: Path,
    overlay: Path,
    seed: Path,
    console: Path,
    port: int,
    machine: str,
    memory_mib: int,
    cdrom_bus: str = "scsi",
) -> str:
    dom_type = "kvm" if has_hw_virt() and os.environ.get("DEVENV_ALLOW_KVM") else "qemu"
    cmdline = (guest / "cmdline").read_text().strip()
    e = lambda p: escape(str(p), {"'": "&apos;"})  # noqa: E731
    return f"""<domain type='{dom_type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>
    <kernel>{e(guest / "vmlinuz")}</kernel>
    <initrd>{e(guest / "initrd.img")}</initrd>
    <cmdline>{e(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe'/>
      <source file='{e(overlay)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    {"<controller type='scsi' model='virtio-scsi'/>" if cdrom_bus == "scsi" else ""}
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{e(seed)}'/>
      <target dev='{"hdc" if cdrom_bus == "ide" else "sda"}' bus='{cdrom_bus}'/>
      <readonly/>
    </disk>
    <serial type='file'>
      <source path='{e(console)}' append='off'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=devnet0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=devnet0,addr=0x10'/>
  </qemu:commandline>
</domain>
"""


def wait_for(pred, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = pred()
        if r:
            return r
        time.sleep(interval)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("guestdir", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (keys, logs)")
    ap.add_argument("--no-restart", action="store_true", help="skip the restart/persistence check")
    ap.add_argument(
        "--machine", default="q35", help="q35 (default; ~0.4 s faster to boot under TCG than pc) or pc (i440fx)"
    )
    ap.add_argument(
        "--cdrom-bus",
        default="scsi",
        choices=["scsi", "ide", "sata"],
        help="seed cdrom bus: scsi = virtio-scsi (default); ide needs --machine pc; "
        "sata (AHCI) is not in Debian's cloud kernel",
    )
    ap.add_argument("--memory", type=int, default=256, help="MiB")
    ap.add_argument(
        "--exec",
        dest="extra",
        action="append",
        default=[],
        help="run this command in the guest over ssh after the first boot (debugging)",
    )
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for boot and for shutdown")
    args = ap.parse_args()
    guest = args.guestdir.resolve()
    for f in ("vmlinuz", "initrd.img", "disk.qcow2", "cmdline"):
        if not (guest / f).is_file():
            sys.exit(f"error: {guest / f} missing\nhint: tests/guest/build-tiny-guest.sh {guest}")

    work = Path(tempfile.mkdtemp(prefix="devenv-bootcheck-"))
    work.chmod(0o755)  # QEMU runs as libvirt-qemu and must reach the overlay, seed and log
    name = f"devenv-bootcheck-{uuid.uuid4().hex[:8]}"
    times: dict[str, float] = {}
    ok = False
    conn = dom = None
    console = work / "console.log"
    try:
        t = time.monotonic()
        for kind in ("client", "hostkey"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"devenv-{kind}", "-f", str(work / kind)],
                check=True,
            )
        seed = make_seed(work, "tiny-check", name, (work / "client.pub").read_text().strip(), work / "hostkey")
        overlay = work / "overlay.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(guest / "disk.qcow2"), "-F", "qcow2", str(overlay)],
            check=True,
        )
        base_sum = subprocess.run(
            ["sha256sum", str(guest / "disk.qcow2")], capture_output=True, text=True, check=True
        ).stdout.split()[0]
        port = free_port()
        known = work / "known_hosts"
        hostpub = (work / "hostkey.pub").read_text().split()
        known.write_text(f"[127.0.0.1]:{port} {hostpub[0]} {hostpub[1]}\n")
        times["prepare (keys, seed, overlay)"] = time.monotonic() - t

        ssh_base = [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(work / "client"),
            "-p",
            str(port),
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            "root@127.0.0.1",
        ]

        def ssh(cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
            return subprocess.run(ssh_base + [cmd], capture_output=True, text=True, timeout=timeout)

        conn = libvirt.open(URI)
        xml = domain_xml(name, guest, overlay, seed, console, port, args.machine, args.memory, args.cdrom_bus)
        (work / "domain.xml").write_text(xml)

        def boot(label: str) -> None:
            t0 = time.monotonic()
            dom.create()
            times[f"{label}: create()"] = time.monotonic() - t0

            def marker():
                try:
                    return MARKER in console.read_text(errors="replace")
                except OSError:
                    return False

            if not wait_for(marker, args.timeout):
                raise RuntimeError(f"no {MARKER} on the serial console within {args.timeout:.0f} s")
            times[f"{label}: start -> serial marker"] = time.monotonic() - t0

            def ssh_ok():
                try:
                    r = ssh("uname -a; hostname", timeout=10)
                except subprocess.TimeoutExpired:
                    return None
                return r if r.returncode == 0 else None

            r = wait_for(ssh_ok, args.timeout, interval=0.2)
            if not r:
                last = ssh("true")
                raise RuntimeError(f"ssh did not succeed: rc={last.returncode} {last.stderr.strip()}")
            times[f"{label}: start -> ssh ok"] = time.monotonic() - t0
            print(f"[{label}] ssh: {r.stdout.strip()}")

        def shutdown(label: str) -> None:
            t0 = time.monotonic()
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            if not wait_for(lambda: not dom.isActive(), args.timeout, interval=0.05):
                dom.destroy()
                raise RuntimeError(f"ACPI shutdown did not finish within {args.timeout:.0f} s (destroyed)")
            times[f"{label}: ACPI shutdown"] = time.monotonic() - t0

        t = time.monotonic()
        dom = conn.defineXML(xml)
        times["defineXML"] = time.monotonic() - t
        t_defined = time.monotonic()
        boot("boot 1")
        times["define -> ssh ok"] = time.monotonic() - t_defined

        t = time.monotonic()
        r = ssh("true")
        times["ssh round trip (true)"] = time.monotonic() - t
        assert r.returncode == 0, r.stderr
        r = ssh("hostname")
        assert r.stdout.strip() == "tiny-check", f"hostname from seed not applied: {r.stdout!r}"

        for cmd in args.extra:
            r = ssh(cmd, timeout=60)
            print(f"$ {cmd}\n{r.stdout}{r.stderr}(rc={r.returncode})")

        try:
            t = time.monotonic()
            reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps({"execute": "guest-ping"}), 10, 0)
            times["guest agent ping"] = time.monotonic() - t
            print(f"guest agent: {reply}")
        except libvirt.libvirtError as exc:
            print(f"guest agent: not answering ({exc})")

        if not args.no_restart:
            token = uuid.uuid4().hex
            r = ssh(f"echo {token} >/root/persist-check; mkdir -p /data/x && echo {token} >/data/x/f; sync")
            assert r.returncode == 0, r.stderr
            shutdown("boot 1")
            boot("boot 2")
            r = ssh("cat /root/persist-check /data/x/f")
            assert r.stdout.split() == [token, token], f"data did not survive the restart: {r.stdout!r}"
            print("persistence: /root and /data survived a restart")
            shutdown("boot 2")
        else:
            shutdown("boot 1")

        after = subprocess.run(
            ["sha256sum", str(guest / "disk.qcow2")], capture_output=True, text=True, check=True
        ).stdout.split()[0]
        assert after == base_sum, "the base disk.qcow2 changed!"
        ok = True
    except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError, libvirt.libvirtError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        try:
            tail = console.read_text(errors="replace").splitlines()[-40:]
            print("--- serial console (last 40 lines) ---\n" + "\n".join(tail), file=sys.stderr)
        except OSError:
            pass
    finally:
        t = time.monotonic()
        if dom is not None:
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass
            try:
                dom.undefine()
            except libvirt.libvirtError as exc:
                print(f"warning: undefine failed: {exc}", file=sys.stderr)
        if conn is not None:
            conn.close()
        if args.keep or not ok:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        times["cleanup (undefine, delete)"] = time.monotonic() - t

    print("\ntimings:")
    for k, v in times.items():
        print(f"  {k:<34} {v:6.2f} s")
    print("\nRESULT:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
