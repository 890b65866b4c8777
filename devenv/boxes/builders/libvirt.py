"""The libvirt output: a bootable qcow2 box in the box store, from Debian packages only.

debootstrap a root file system with Debian's cloud kernel and OpenSSH, make it apply the
NoCloud seed at every boot (devenv-seed: hostname, authorized key, pinned host key, shared
folders), then an ext4 image made without mounting (`mkfs.ext4 -d`) converted to qcow2. The
kernel and initrd are kept beside the disk for direct kernel boot. The box ships with NO SSH
host keys: every machine gets its own from its seed. A cloud image or a libvirt .box is the
other kind of source: downloaded, verified, checked, converted.

A recipe with provision steps is baked in a build VM (devenv.boxes.builders.bake, through the
libvirt driver's contract: a BuildTarget machine on the fresh disk, stored with Package).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from devenv.boxes import diskcheck, store
from devenv.boxes.builders import Built, bake, baked_fingerprints, build_target, built
from devenv.contract import QUIET, BoxArtifact, Reporter
from devenv.errors import BoxError
from devenv.masking import tail
from devenv.model.recipe import Recipe

# What devenv's VM machinery needs to boot any debootstrap recipe (direct kernel boot, the seed
# unit, SSH, the guest agent's shutdown, rsync sync folders). A recipe that means the same set on
# every output lists the ones it shares in `packages` and the VM-only ones in `vm_packages`
# (boxes/debian-12.toml does; a test compares both outputs' dpkg lists).
VM_PACKAGES = [
    "linux-image-cloud-amd64",
    "openssh-server",
    "systemd-sysv",
    "udev",
    "dbus",  # without it systemd-logind never runs: ACPI power button and `shutdown +0` do nothing
    "iproute2",
    "rsync",
    "ca-certificates",
    "qemu-guest-agent",
]
CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"

# Applied at every boot, before sshd: the same subset of the NoCloud seed that devenv writes
# (see devenv/seed.py) and that the test guest's /init applies.
SEED_SCRIPT = r"""#!/bin/sh
# devenv-seed: apply the NoCloud seed (ISO labelled cidata): hostname, root's authorized key,
# the machine's own SSH host key, shared folders. Runs at every boot; idempotent.
set -u
seed() { blkid -L cidata 2>/dev/null || blkid -L CIDATA 2>/dev/null || true; }
dev=$(seed)
# Not probed yet (or no seed at all): wait for udev's coldplug, then look once more. The unit does
# not order itself after systemd-udev-settle: that waits for every device, ~8 s under emulation.
[ -n "$dev" ] || { udevadm settle --timeout=30 || true; dev=$(seed); }
[ -n "$dev" ] || { echo "devenv-seed: no cidata seed" >&2; exit 0; }
mnt=/run/devenv-seed
mkdir -p "$mnt"
mount -o ro "$dev" "$mnt" || exit 1
md="$mnt/meta-data"; ud="$mnt/user-data"
unq() { sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'$/\1/"; }
host=$(sed -n 's/^local-hostname:[[:space:]]*//p' "$md" | head -n1 | unq)
if [ -n "$host" ]; then
  echo "$host" > /etc/hostname; hostname "$host"
  grep -q "[[:space:]]$host\$" /etc/hosts || echo "127.0.1.1 $host" >> /etc/hosts
fi
install -d -m 700 /root/.ssh
awk '/^ssh_authorized_keys:/{f=1;next} f&&/^[[:space:]]*-/{sub(/^[[:space:]]*-[[:space:]]*/,"");print;next} f{f=0}' "$ud" \
  | unq > /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
awk '/^[[:space:]]+ed25519_private:[[:space:]]*\|/{f=1;next} f&&/^    /{sub(/^    /,"");print;next} f{f=0}' "$ud" \
  > /etc/ssh/ssh_host_ed25519_key.new
if [ -s /etc/ssh/ssh_host_ed25519_key.new ]; then
  rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
  mv /etc/ssh/ssh_host_ed25519_key.new /etc/ssh/ssh_host_ed25519_key
  chmod 600 /etc/ssh/ssh_host_ed25519_key
  sed -n 's/^[[:space:]]*ed25519_public:[[:space:]]*//p' "$ud" | unq > /etc/ssh/ssh_host_ed25519_key.pub
fi
# mounts: - ["tag", "/guest/path", "fstype", "options", "0", "0"]
awk '/^mounts:/{f=1;next} f&&/^[[:space:]]*-/{print;next} f{f=0}' "$ud" | tr -d '[]",' | sed 's/^[[:space:]]*-//' |
while read -r tag path fstype opts _; do
  [ -n "$tag" ] || continue
  mkdir -p "$path"
  mountpoint -q "$path" || mount -t "$fstype" -o "$opts" "$tag" "$path" 2>/dev/null ||
    { udevadm settle --timeout=30 || true; mount -t "$fstype" -o "$opts" "$tag" "$path"; } ||
    echo "devenv-seed: cannot mount $tag" >&2
done
# resolv_conf: nameservers: ["a", "b"] (the project networks' DNS, then QEMU's); without it the box's own.
ns=$(sed -n 's/^[[:space:]]*nameservers:[[:space:]]*\[\(.*\)\][[:space:]]*$/\1/p' "$ud" | head -n1 | tr -d '"' | tr ',' ' ')
if [ -n "$ns" ]; then
  { echo "# devenv-seed: from the machine's seed"; for n in $ns; do echo "nameserver $n"; done; echo "options timeout:1 attempts:2"; } > /etc/resolv.conf
elif grep -q '^# devenv-seed' /etc/resolv.conf 2>/dev/null; then
  echo "nameserver 10.0.2.3" > /etc/resolv.conf
fi
# network-config (version 2): a NIC matched by macaddress with fixed addresses (VirtualBox's
# host-only networks have no DHCP) gets a systemd-networkd file ahead of the box's DHCP one.
rm -f /etc/systemd/network/05-devenv-static-*.network
if [ -f "$mnt/network-config" ]; then
  awk '/macaddress:/{gsub(/["[:space:]]/,"",$2); mac=$2; next}
       /addresses:/ && mac!=""{line=$0; sub(/^[^[]*\[/,"",line); sub(/\].*$/,"",line); gsub(/[" ]/,"",line); print mac, line; mac=""}' \
    "$mnt/network-config" | while read -r mac addrs; do
    case "$mac" in *[!0-9a-fA-F:]*|"") continue;; esac
    f="/etc/systemd/network/05-devenv-static-$(echo "$mac" | tr -d :).network"
    { echo "[Match]"; echo "MACAddress=$mac"; echo "[Network]"
      for a in $(echo "$addrs" | tr ',' ' '); do case "$a" in *[!0-9./]*) ;; *) echo "Address=$a";; esac; done; } > "$f"
  done
fi
umount "$mnt"
echo "devenv-seed: applied"
"""  # noqa: E501 - the guest-side shell script reads best unwrapped

SEED_UNIT = """[Unit]
Description=Apply the devenv NoCloud seed (hostname, keys, shared folders)
DefaultDependencies=no
After=systemd-remount-fs.service systemd-udev-trigger.service
Before=ssh.service network-pre.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/devenv-seed
# Boot only: the seed and then sshd get the CPU first (every other unit starts at the same time).
StartupCPUWeight=10000
RemainAfterExit=yes
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

# sshd after the seed only (its host key comes from it). sshd checks its configuration when it
# starts: the package's extra `sshd -t` first is one more sshd run (~0.5 s emulated) per boot.
SSH_DROPIN = """[Unit]
After=devenv-seed.service

[Service]
ExecStartPre=
StartupCPUWeight=10000
"""

# The initramfs only has to find the root file system: the block drivers of the machines the box
# boots on (QEMU/KVM virtio-blk and virtio-scsi, IDE for the VirtualBox box, Xen and Hyper-V
# clouds; NVMe and ext4 are built into the cloud kernel), not every module (MODULES=most): less
# than half the size (6 MB, not 15), and its udev loads a handful of modules instead of dozens.
INITRAMFS_MODULES = [
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",  # eth0 at once: QEMU forwards the SSH port to its DHCP address
    "sd_mod",
    "sr_mod",
    "ata_piix",
    "ata_generic",
    "xen_blkfront",
    "hv_storvsc",
]

# Not needed at boot by a dev machine or a server image: no LVM snapshots to reap, no console on
# tty1 (the box's console is ttyS0, which gets its serial getty), kernel modules that systemd
# preloads but that load on first use anyway (mount, /dev node, udev); periodic jobs that nothing
# in the box configures (apt's do nothing without APT::Periodic).
MASKED = [
    "e2scrub_reap.service",
    *(f"modprobe@{m}.service" for m in ("drm", "dm_mod", "loop", "efi_pstore", "configfs", "fuse")),
]
DISABLED = [
    "getty.target.wants/getty@tty1.service",
    *(
        f"timers.target.wants/{t}"
        for t in ("apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer", "fstrim.timer")
    ),
]

NETWORK = """[Match]
Name=eth* en*

[Network]
DHCP=ipv4
"""


def _run(argv: list[str], what: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise BoxError(f"{what} failed: {tail((r.stderr or r.stdout).strip(), 800)}")


def configure_rootfs(root: Path, hostname: str) -> None:
    (root / "etc/fstab").write_text("LABEL=root / ext4 defaults,errors=remount-ro 0 1\n")  # any disk bus, any layout
    (root / "etc/hostname").write_text(hostname + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost ip6-localhost\n")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("nameserver 10.0.2.3\n")  # QEMU user networking's DNS
    net = root / "etc/systemd/network"
    net.mkdir(parents=True, exist_ok=True)
    (net / "10-devenv-dhcp.network").write_text(NETWORK)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in ("systemd-networkd.service",):
        link = wants / unit
        if not link.exists():
            link.symlink_to(f"/lib/systemd/system/{unit}")
    sbin = root / "usr/local/sbin/devenv-seed"
    sbin.parent.mkdir(parents=True, exist_ok=True)
    sbin.write_text(SEED_SCRIPT)
    sbin.chmod(0o755)
    (root / "etc/systemd/system/devenv-seed.service").write_text(SEED_UNIT)
    link = wants / "devenv-seed.service"
    if not link.exists():
        link.symlink_to("/etc/systemd/system/devenv-seed.service")
    sshd = root / "etc/ssh/sshd_config.d"
    sshd.mkdir(parents=True, exist_ok=True)
    (sshd / "devenv.conf").write_text(
        "# devenv: keys only; the host key comes from the machine's seed\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\n"
    )
    # No shared host keys in a box: debootstrap's openssh-server made some; every machine gets its own.
    for k in (root / "etc/ssh").glob("ssh_host_*"):
        k.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # Fast boot under emulation: no waiting for a network that QEMU's user net provides at once.
    for unit in ("systemd-networkd-wait-online.service", *MASKED):
        mask = root / "etc/systemd/system" / unit
        mask.unlink(missing_ok=True)
        mask.symlink_to("/dev/null")
    # Generators that systemd runs before any unit and that cannot apply to this image: no GPT/EFI
    # boot loader (direct kernel boot or SYSLINUX), no swap to resume from.
    gens = root / "etc/systemd/system-generators"
    gens.mkdir(parents=True, exist_ok=True)
    for gen in ("systemd-gpt-auto-generator", "systemd-hibernate-resume-generator"):
        (gens / gen).unlink(missing_ok=True)
        (gens / gen).symlink_to("/dev/null")
    for link in DISABLED:
        (root / "etc/systemd/system" / link).unlink(missing_ok=True)
    dropin = root / "etc/systemd/system/ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "devenv.conf").write_text(SSH_DROPIN)
    # QEMU's user network forwards the SSH port to the guest's DHCP address: networkd's lease is
    # on the way to SSH as much as sshd is, so it gets the same boot-time CPU weight.
    dropin = root / "etc/systemd/system/systemd-networkd.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "devenv.conf").write_text("[Service]\nStartupCPUWeight=10000\n")
    _small_initramfs(root)


def _small_initramfs(root: Path) -> None:
    """Rebuild the root file system's initramfs with MODULES=list (see INITRAMFS_MODULES)."""
    conf = root / "etc/initramfs-tools"
    if not (conf / "initramfs.conf").exists() or not list((root / "boot").glob("vmlinuz-*")):
        return  # no initramfs-tools (or no kernel): nothing to rebuild
    (conf / "conf.d").mkdir(parents=True, exist_ok=True)
    (conf / "conf.d/devenv.conf").write_text("# devenv: the root file system's drivers only\nMODULES=list\n")
    mods = conf / "modules"
    have = mods.read_text() if mods.exists() else ""
    mods.write_text(have + "".join(f"{m}\n" for m in INITRAMFS_MODULES if m not in have.split()))
    _run(["chroot", str(root), "update-initramfs", "-u", "-k", "all"], "update-initramfs")


def wanted(recipe: Recipe) -> bool:
    """Whether `up` on a libvirt machine builds this recipe when it is missing: one with a libvirt output."""
    return "libvirt" in recipe.outputs


def present(recipe: Recipe, driver: Any = None) -> bool:
    return store.find_stored(recipe.name, recipe.version, "libvirt") is not None


def build(recipe: Recipe, driver: Any, *, machine: str | None = None, reporter: Reporter = QUIET) -> store.StoredBox:
    """`up`: build the recipe's libvirt box, baking (if it has steps) on the machine's driver."""
    return build_libvirt_box(recipe, driver=driver, machine=machine, reporter=reporter)


def output(recipe: Recipe, *, force: bool = False, reporter: Reporter = QUIET) -> Built:
    """`box build --output libvirt`: the stored box, unless it exists (``force`` rebuilds it)."""
    stored = store.find_stored(recipe.name, recipe.version, "libvirt")
    if stored and not force:
        found = _built(stored, existed=True)
        return built(reporter, found, f"box {recipe.label} (libvirt) exists in {stored.folder}; --force rebuilds it")
    if stored:
        store.ensure_unused(stored, "rebuild")  # before minutes of building, not after
    stored = build_libvirt_box(recipe, reporter=reporter)
    text = f"built {recipe.label} (libvirt) in {stored.folder} (disk sha256:{(stored.digest() or '')[:16]}...)"
    return built(reporter, _built(stored), text)


def _built(stored: store.StoredBox, *, existed: bool = False) -> Built:
    return Built(
        "libvirt", stored.name, stored.version, str(stored.folder), "sha256:" + (stored.digest() or ""), existed
    )


def _driver(driver: Any, reporter: Reporter) -> Any:
    """The libvirt driver a bake runs on: the caller's (`up`: the project's), else the registry's."""
    if driver is None:
        from devenv.plugins import get_driver

        driver = get_driver("libvirt")
        driver.reporter = reporter
    driver.check_available()
    return driver


def build_libvirt_box(
    recipe: Recipe,
    *,
    driver: Any = None,
    machine: str | None = None,
    disk_size: str = "3G",
    reporter: Reporter = QUIET,
) -> store.StoredBox:
    """Build and store the recipe's libvirt box (``driver``: the libvirt driver a bake runs on)."""
    from devenv.boxes import rootfs

    src = next((s for s in recipe.sources if s["type"] in ("debootstrap", "cloud-image", "box")), None)
    if src is None:
        raise BoxError(
            f"box {recipe.name}: a libvirt output needs a debootstrap, cloud-image or box source in {recipe.path}"
        )
    if src["type"] != "debootstrap":
        return _build_from_image(recipe, src, driver=driver, machine=machine, reporter=reporter)
    for tool in ("mkfs.ext4", "qemu-img"):
        if shutil.which(tool) is None:
            raise BoxError(f"{tool} is not installed", hint="apt-get install e2fsprogs qemu-utils")
    include = list(dict.fromkeys([*recipe.packages_for(src, vm=True), *VM_PACKAGES]))
    with tempfile.TemporaryDirectory(prefix="devenv-vmbox-") as tmp:
        work = Path(tmp)
        root = work / "rootfs"
        root.mkdir()
        text = f"building box {recipe.name}@{recipe.version} for libvirt (debootstrap)"
        with reporter.progress(machine, text, phase="build"):
            rootfs.build_debootstrap_rootfs(
                root,
                suite=src["suite"],
                variant=src.get("variant", "minbase"),
                include=include,
                mirror=src.get("mirror"),
                on_output=lambda line: reporter.output(machine, line) if reporter.debug_enabled else None,
            )
        configure_rootfs(root, recipe.name)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise BoxError(
                f"box {recipe.name}: no kernel/initrd in the root file system",
                hint="the recipe's packages must include a Debian kernel (linux-image-cloud-amd64)",
            )
        kernel, initrd = work / "vmlinuz", work / "initrd.img"
        shutil.copy2(kernels[-1], kernel)
        shutil.copy2(initrds[-1], initrd)
        with reporter.progress(machine, "making the disk image (mkfs.ext4 -d, qcow2)", phase="build"):
            raw = work / "disk.raw"
            _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(raw), disk_size], "mkfs.ext4")
            shutil.rmtree(root)
            disk = work / "disk.qcow2"
            _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], "qemu-img convert")
            raw.unlink()
        meta = {
            "cmdline": CMDLINE,
            "ssh_user": "root",
            "sync": ["virtiofs", "rsync"],
            "description": recipe.description,
            "built_from": str(recipe.path),
            "origin": recipe.origin,
            "baked": baked_fingerprints(recipe),
        }
        if recipe.provision:
            return bake_in_vm(
                recipe, work, disk, kernel, initrd, meta, driver=driver, machine=machine, reporter=reporter
            )
        return store.store_box(
            recipe.name, recipe.version, "libvirt", {"disk": disk, "kernel": kernel, "initrd": initrd}, meta, work=work
        )


# Run inside the build VM after the baked steps: the box must not carry the build machine's
# identity (its host key, authorized key, machine-id) to every machine made from it.
SCRUB = (
    "rm -f /etc/ssh/ssh_host_* /root/.ssh/authorized_keys; : > /etc/machine-id; "
    "rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*; sync"
)


def _build_from_image(
    recipe: Recipe, src: dict, *, driver: Any, machine: str | None, reporter: Reporter
) -> store.StoredBox:
    """A libvirt box from a downloaded disk: a cloud image, or an existing Vagrant .box (libvirt)."""
    from devenv.boxes import vagrantbox

    ref = src.get("url") or str((recipe.root / src["path"]).resolve())
    with tempfile.TemporaryDirectory(prefix=".devenv-vmbox-", dir=store.ensure_store_root()) as tmp:
        work = Path(tmp)
        fetched = Path(vagrantbox.fetch(ref, work / "download", reporter=reporter))
        vagrantbox.verify(fetched, vagrantbox.parse_checksum(src["sha256"]), ref)
        kernel = initrd = None
        meta: dict = {
            "description": recipe.description,
            "built_from": str(recipe.path),
            "origin": recipe.origin,
            "sync": ["rsync"],
            "ssh_user": src.get("ssh_user", "root"),
        }
        if src["type"] == "box":
            # The same checked extraction as `box add`: allow-listed plain files only, in a 0700 folder.
            box = vagrantbox.unpack(fetched, work, what=ref, provider="libvirt")
            if "box.img" not in box.names:
                raise BoxError(f"{ref} is not a libvirt .box: it has no box.img")
            meta.update({k: v for k, v in box.extra.items() if k in ("cmdline", "ssh_user", "sync")})
            disk = box.folder / "box.img"
            diskcheck.inspect(disk, ("qcow2",), f"{ref}: box.img")  # the same check as `box add`
            if "vmlinuz" in box.names and "initrd.img" in box.names:
                kernel, initrd = box.folder / "vmlinuz", box.folder / "initrd.img"
        else:
            # Checked before qemu-img reads it, and read with its format given (never probed): a qcow2
            # naming a backing or data file, or a VMDK descriptor, would make qemu-img read host files
            # into the box. raw is read as raw bytes only.
            fmt = diskcheck.inspect(fetched, ("qcow2", "raw"), ref).format
            disk = work / "disk.qcow2"
            _run(["qemu-img", "convert", "-q", "-f", fmt, "-O", "qcow2", str(fetched), str(disk)], "qemu-img convert")
        if kernel is None:
            meta["bootloader"] = True
        meta["baked"] = baked_fingerprints(recipe)
        meta["source"] = {"ref": ref, "sha256": vagrantbox.parse_checksum(src["sha256"])[1]}
        if recipe.provision:
            return bake_in_vm(
                recipe, work, disk, kernel, initrd, meta, driver=driver, machine=machine, reporter=reporter
            )
        files = {"disk": disk}
        if kernel is not None:
            files.update({"kernel": kernel, "initrd": initrd})
        return store.store_box(recipe.name, recipe.version, "libvirt", files, meta, work=work)


def bake_in_vm(
    recipe: Recipe,
    work: Path,
    disk: Path,
    kernel: Path | None,
    initrd: Path | None,
    meta: dict,
    *,
    driver: Any = None,
    machine: str | None = None,
    reporter: Reporter = QUIET,
) -> store.StoredBox:
    """Boot the fresh disk in a build VM, run the recipe's steps, scrub it and store it.

    The libvirt driver's Package flattens the build VM's disk (overlay + fresh disk) into the
    store with the VM's kernel and initrd and ``meta``; the build VM goes whatever happens, so
    only a disk whose every step succeeded is stored.
    """
    driver = _driver(driver, reporter)
    build_root = work / "build"
    build_root.mkdir()
    box = BoxArtifact(
        recipe.name,
        recipe.version,
        str(disk),
        None,
        {
            "kernel": str(kernel) if kernel else None,
            "initrd": str(initrd) if initrd else None,
            "cmdline": meta.get("cmdline", ""),
            "ssh_user": meta.get("ssh_user", "root"),
            "sync": [],
        },
    )
    bake(
        driver,
        recipe,
        box,
        target=build_target(recipe, driver.name, build_root, cpus=1, memory=768 * 1024**2),
        label=machine or f"box {recipe.name}",
        reporter=reporter,
        boot="booting the build VM",
        finish=["/bin/sh", "-c", SCRUB],
        record={k: v for k, v in meta.items() if k != "baked"},
    )
    stored = store.find_stored(recipe.name, recipe.version, "libvirt")
    if stored is None:
        raise BoxError(f"box {recipe.name}@{recipe.version} (libvirt) was baked but is not in the box store")
    return stored
