"""The libvirt driver against real libvirtd + QEMU (software emulation here), through the CLI.

Lifecycle tests boot a tiny guest built by tests/guest/build-tiny-guest.sh (busybox + dropbear
initramfs, ~5 s to SSH under TCG); one test boots the real Debian box from boxes/debian-12.toml.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, assert_no_traceback, free_port
from tests.support import require_tool

pytestmark = pytest.mark.libvirt


def test_vm_lifecycle(vm, tiny_box, libvirt_driver):
    port = free_port()
    vm.devfile(f"""\
        [machines.box1]
        driver = "libvirt"
        box = "tiny-vm"
        memory = "256MiB"
        hostname = "tiny-one"
        env = {{ GREETING = "hello vm" }}
        ports = [{{ guest = 8080, host = {port} }}]
        sync = [{{ host = "site", guest = "/srv/site" }}]
        provision = [
          {{ type = "shell", inline = "echo step0 >> /data/steps" }},
          {{ type = "file", source = "conf", destination = "/etc/app" }},
          {{ type = "shell", script = "start.sh", run = "always" }},
        ]
    """)
    vm.write("site/index.html", "<h1>served from a VM</h1>\n")
    vm.write("conf/a.conf", "A=1\n")
    vm.write("start.sh", "pidof httpd >/dev/null || httpd -p 8080 -h /srv/site\n")

    t0 = time.monotonic()
    r = vm.run("up", check=True)
    up_seconds = time.monotonic() - t0
    assert "==> box1: sync" in r.stderr and "(copy)" in r.stderr
    st = vm.status()["box1"]
    assert st["state"] == "running" and st["driver"] == "libvirt" and st["provision"] == "up to date"
    assert st["sync"] == "rsync"
    assert f"127.0.0.1:{port} -> 8080/tcp" in st["ports"]

    r = vm.run("ssh", "box1", "-c", 'hostname; echo "$GREETING"; cat /etc/app/a.conf; exit 3')
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines() == ["tiny-one", "hello vm", "A=1"]
    t1 = time.monotonic()
    assert vm.run("exec", "box1", "--", "true").returncode == 0
    print(f"\nlibvirt tiny guest: up {up_seconds:.1f}s, exec round trip {time.monotonic() - t1:.2f}s")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10).read().decode()
    assert "served from a VM" in body

    # ssh-config works with plain ssh and the pinned key.
    cfg = vm.root / "ssh_config"
    cfg.write_text(vm.run("ssh-config", check=True).stdout)
    alias = f"{vm.root.name}-box1"
    r = subprocess.run(["ssh", "-F", str(cfg), alias, "echo plain-ssh-ok"], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "plain-ssh-ok", r.stderr

    # Snapshot save -> change -> restore: the change is gone.
    vm.run("snapshot", "save", "box1", "clean", check=True)
    vm.run("ssh", "box1", "-c", "echo changed > /data/marker", check=True)
    assert vm.run("snapshot", "list", "box1", "--json", check=True).stdout.strip() == '["clean"]'
    t2 = time.monotonic()
    vm.run("snapshot", "restore", "box1", "clean", check=True)
    print(f"libvirt snapshot restore {time.monotonic() - t2:.1f}s")
    assert vm.run("ssh", "box1", "-c", "test -e /data/marker").returncode == 1
    vm.run("snapshot", "delete", "box1", "clean", check=True)

    # halt -> stopped; up -> running again, data on the disk kept.
    vm.run("halt", check=True)
    assert vm.status()["box1"]["state"] == "stopped"
    r = vm.run("up", check=True)
    assert "provision [0]" not in r.stderr and "provision [2]" in r.stderr
    assert vm.run("ssh", "box1", "-c", "cat /data/steps").stdout == "step0\n"

    vm.run("destroy", "-f", check=True)
    assert vm.domains(libvirt_driver) == []
    assert not (vm.root / ".devenv" / "machines" / "box1").exists()
    assert not list((Path(os.environ["DEVENV_HOME"]) / "libvirt").glob("*"))


def test_swapped_host_key_is_refused(vm, tiny_box):
    vm.devfile('[machines.k]\ndriver = "libvirt"\nbox = "tiny-vm"\nmemory = "256MiB"\n')
    vm.run("up", check=True)
    # Give the guest a new host key (as an impostor would have), then restart it.
    r = vm.run(
        "ssh",
        "k",
        "-c",
        "dropbearkey -t ed25519 -f /tmp/new >/dev/null 2>&1 && "
        "cp /tmp/new /etc/dropbear/dropbear_ed25519_host_key && sync",
    )
    assert r.returncode == 0, r.stderr
    vm.run("halt", check=True)
    vm.run("up", "--no-provision", check=True)
    r = vm.run("ssh", "k", "-c", "true")
    assert r.returncode == 12, r.stderr
    assert "does not match the one devenv pinned" in r.stderr
    assert_no_traceback(r)


def test_boot_failure_is_reported_and_cleaned_up(vm, tiny_box, libvirt_driver):
    from devenv.boxes import store as boxes

    # Same box, but a kernel command line that never reaches userspace.
    meta = json.loads((tiny_box.folder / "box.json").read_text())
    meta["cmdline"] = "console=ttyS0 rdinit=/does-not-exist panic=0"
    (tiny_box.folder / "box.json").write_text(json.dumps(meta))
    assert boxes.find_stored("tiny-vm", "1", "libvirt").meta["cmdline"].endswith("panic=0")
    vm.devfile(
        '[machines.b]\ndriver = "libvirt"\nbox = "tiny-vm"\nmemory = "256MiB"\n'
        "[machines.b.libvirt]\nboot_timeout = 15\n"
    )
    r = vm.run("up")
    assert r.returncode == 4, r.stderr
    assert_no_traceback(r)
    assert "did not bring up SSH within 15s" in r.stderr and "last console lines" in r.stderr
    assert "Kernel panic" in r.stderr or "does-not-exist" in r.stderr
    assert vm.domains(libvirt_driver) == []


def test_docker_and_libvirt_in_one_devfile(vm, tiny_box):
    vm.devfile("""\
        [machines.api]
        box = "busybox"
        [machines.vm]
        driver = "libvirt"
        box = "tiny-vm"
        memory = "256MiB"
        depends_on = ["api"]
    """)
    vm.run("up", check=True)
    st = vm.status()
    assert st["api"]["state"] == "running" and st["api"]["driver"] == "docker"
    assert st["vm"]["state"] == "running" and st["vm"]["driver"] == "libvirt"
    assert vm.run("ssh", "api", "-c", "echo container").stdout == "container\n"
    assert vm.run("ssh", "vm", "-c", "echo virtual-machine").stdout == "virtual-machine\n"
    vm.run("destroy", "-f", check=True)
    assert vm.labelled()["containers"] == []


@pytest.mark.slow
def test_debian_box_boots_with_shared_folder(vm, debian_vm_box):
    """The real Debian box (debootstrap + cloud kernel + OpenSSH + systemd), built once per run."""
    vm.devfile("""\
        [machines.deb]
        driver = "libvirt"
        box = "debian-12"
        memory = "512MiB"
        hostname = "deb"
        sync = [{ host = ".", guest = "/src" }]
        provision = [
          { type = "shell", script = "provisioners/base.sh", args = ["dev"] },
          { type = "shell", inline = "cat /etc/debian_version > /src/version-from-guest" },
        ]
    """)
    # The recipe's own baked step, byte for byte: the machine must skip it and still have its effect.
    (vm.root / "provisioners").mkdir()
    shutil.copy2(REPO / "provisioners" / "base.sh", vm.root / "provisioners" / "base.sh")
    r = vm.run("up", timeout=1200)
    assert r.returncode == 0, r.stderr
    assert "provision [0] shell provisioners/base.sh: baked into box debian-12@" in r.stderr
    assert vm.run("ssh", "deb", "-c", "id -un dev").stdout == "dev\n"
    assert vm.status()["deb"]["baked_steps"] == [0]
    assert (vm.root / "version-from-guest").read_text().startswith("12")
    st = vm.status()["deb"]
    assert st["sync"] == "virtiofs"
    assert vm.run("ssh", "deb", "-c", "hostname").stdout.strip() == "deb"
    t0 = time.monotonic()
    vm.run("halt", check=True)
    print(f"\ndebian box: halt {time.monotonic() - t0:.1f}s")
    vm.run("destroy", "-f", check=True)


def test_vm_reload_applies_settings_in_place_and_suspend(vm, tiny_box, libvirt_driver):
    devfile = '[machines.r]\ndriver = "libvirt"\nbox = "tiny-vm"\nmemory = "{mem}"\nhostname = "{host}"\n'
    vm.devfile(devfile.format(mem="256MiB", host="before"))
    vm.run("up", check=True)
    vm.run("ssh", "r", "-c", "echo kept > /data/file", check=True)

    # suspend (managed save) and resume
    vm.run("suspend", check=True)
    assert vm.status()["r"]["state"] == "suspended"
    vm.run("resume", check=True)
    assert vm.run("ssh", "r", "-c", "cat /data/file").stdout == "kept\n"

    vm.devfile(devfile.format(mem="384MiB", host="after"))
    st = vm.status()["r"]
    assert st["action"] == "reload" and "devenv reload r" in st["settings"]
    vm.run("reload", check=True)
    st = vm.status()["r"]
    assert st["action"] is None and st["state"] == "running"
    dom = libvirt_driver.conn().lookupByName(f"devenv-{vm.project_id}-r")
    assert dom.maxMemory() == 384 * 1024
    assert vm.run("ssh", "r", "-c", "hostname; cat /data/file").stdout == "after\nkept\n"

    # A different box is another machine: reload says so instead of silently wiping the disk.
    vm.devfile(devfile.format(mem="384MiB", host="after").replace('"tiny-vm"', '"tiny-vm@1"'))
    assert vm.status()["r"]["action"] == "recreate"
    r = vm.run("reload")
    assert r.returncode == 4 and "--recreate" in r.stderr
    assert_no_traceback(r)


def test_package_a_vm_into_a_box(vm, tiny_box, tmp_path):
    vm.devfile(
        '[machines.p]\ndriver = "libvirt"\nbox = "tiny-vm"\nmemory = "256MiB"\n'
        'provision = [{ type = "shell", inline = "echo from-source > /data/pkg" }]\n'
    )
    vm.run("up", check=True)
    r = vm.run("package", "--box", "tiny-pkg", "--version", "1")
    assert r.returncode == 4 and "halt" in r.stderr, "a running VM's disk is not consistent"
    vm.run("halt", check=True)
    out = tmp_path / "tiny-pkg.box"
    vm.run("package", "--box", "tiny-pkg", "--version", "1", "-o", str(out), check=True)
    assert out.stat().st_size > 0
    vm.run("destroy", "-f", check=True)
    vm.devfile(
        '[machines.p]\ndriver = "libvirt"\nbox = "tiny-pkg"\nmemory = "256MiB"\n'
        'provision = [{ type = "shell", inline = "echo from-source > /data/pkg" }]\n'
    )
    r = vm.run("up", check=True)
    assert "baked into box tiny-pkg@1, skipped" in r.stderr
    assert vm.run("ssh", "p", "-c", "cat /data/pkg").stdout == "from-source\n"
    vm.run("destroy", "-f", check=True)


def test_recipe_from_a_box_file_bakes_in_a_vm(vm, tiny_box, tmp_path):
    """A recipe whose source is an existing .box (checksum required) bakes its steps in a build VM."""
    import hashlib

    from devenv.boxes import vagrantbox as boxfile

    box_file = vm.root / "tiny.box"
    boxfile.write_libvirt_box(tiny_box, box_file)
    sha = hashlib.sha256(box_file.read_bytes()).hexdigest()
    recipe = (
        'name = "from-box"\nversion = "1"\noutputs = ["libvirt"]\n'
        'provision = [{ type = "shell", inline = "echo baked-in-vm > /data/baked" }]\n\n'
        '[[sources]]\ntype = "box"\npath = "tiny.box"\nsha256 = "%s"\n'
    )
    vm.write("boxes/from-box.toml", recipe % ("0" * 64))
    r = vm.run("box", "build", "from-box")
    assert r.returncode == 7 and "checksum mismatch" in r.stderr, r.stderr
    assert "from-box" not in vm.run("box", "list", "--json", check=True).stdout.split('"recipes"')[0]

    vm.write("boxes/from-box.toml", recipe % sha)
    r = vm.run("box", "build", "from-box", check=True)
    assert "bake [0] shell: echo baked-in-vm" in r.stderr
    vm.devfile(
        '[machines.b]\ndriver = "libvirt"\nbox = "from-box"\nmemory = "256MiB"\n'
        'provision = [{ type = "shell", inline = "echo baked-in-vm > /data/baked" }]\n'
    )
    r = vm.run("up", check=True)
    assert "baked into box from-box@1, skipped" in r.stderr
    assert vm.run("ssh", "b", "-c", "cat /data/baked").stdout == "baked-in-vm\n"
    vm.run("destroy", "-f", check=True)


def test_libvirt_unreachable_is_one_clear_message(vm, tiny_box):
    vm.devfile(
        '[machines.x]\ndriver = "libvirt"\nbox = "tiny-vm"\n'
        '[machines.x.libvirt]\nuri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"\n'
    )
    # A Devfile may not choose libvirt's socket (a repository could point it anywhere): exit 2.
    r = vm.run("up")
    assert r.returncode == 2, r.stderr
    assert "the parameter 'socket' is not one a Devfile may set" in r.stderr
    assert_no_traceback(r)
    # The host user may, through the environment: an unreachable daemon is one clear message.
    vm.devfile('[machines.x]\ndriver = "libvirt"\nbox = "tiny-vm"\n')
    r = vm.run("up", env={"DEVENV_LIBVIRT_URI": "qemu+unix:///system?socket=/nonexistent/sock"})
    assert r.returncode == 3, r.stderr
    assert "libvirtd is not running" in r.stderr and "hint:" in r.stderr
    assert_no_traceback(r)


def test_bios_bootable_disk_boots_without_direct_kernel_boot(vm, tiny_box, tmp_path):
    """The disk layout of VirtualBox boxes (MBR + SYSLINUX + kernel on FAT + root partition), booted by
    QEMU's BIOS: the one part of a VirtualBox box that can be checked on a machine without VirtualBox."""
    import subprocess

    from devenv.boxes import biosdisk
    from devenv.boxes import store as boxes

    raw_root = tmp_path / "root.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(tiny_box.file("disk")), str(raw_root)], check=True)
    raw = tmp_path / "bios.raw"
    biosdisk.make_bios_disk(raw_root, tiny_box.file("kernel"), tiny_box.file("initrd"), tiny_box.meta["cmdline"], raw)
    disk = tmp_path / "bios.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], check=True)
    boxes.store_box(
        "tiny-bios", "1", "libvirt", {"disk": disk}, {"bootloader": True, "ssh_user": "root", "sync": ["rsync"]}
    )
    vm.devfile('[machines.bios]\ndriver = "libvirt"\nbox = "tiny-bios"\nmemory = "256MiB"\n')
    vm.run("up", check=True)
    r = vm.run("ssh", "bios", "-c", "cat /proc/cmdline")
    assert "BOOT_IMAGE=vmlinuz" in r.stdout, r.stdout + r.stderr  # SYSLINUX booted it, not libvirt
    vm.run("destroy", "-f", check=True)


def test_virtualbox_box_output_is_accepted_by_vagrant_and_box_add(vm, tiny_box, tmp_path):
    import hashlib
    import tarfile

    from devenv.boxes import store as boxes
    from devenv.boxes import vagrantbox as boxfile

    out = boxfile.write_virtualbox_box(tiny_box, tmp_path / "tiny-vb.box")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        ovf = tar.extractfile("box.ovf").read().decode()
    assert {"metadata.json", "box.ovf", "box-disk001.vmdk", "Vagrantfile"} <= names
    assert 'ovf:href="box-disk001.vmdk"' in ovf and "PIIX4" in ovf
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    added = boxfile.add_box_file(out, name="tiny-vb", version="1", checksum=f"sha256:{sha}")
    assert added.provider == "virtualbox" and boxes.find_stored("tiny-vb", "1", "virtualbox") is not None

    require_tool("vagrant", "apt-get install --no-install-recommends vagrant")
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vhome"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    r = subprocess.run(
        ["vagrant", "box", "add", "--name", "devenv/tiny-vb", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "devenv/tiny-vb (virtualbox, 0)"
        in subprocess.run(["vagrant", "box", "list"], capture_output=True, text=True, env=env).stdout
    )
