#!/usr/bin/env bash
# Build a small, fast-booting guest for devenv's libvirt lifecycle tests (QEMU TCG friendly).
#
#   tests/guest/build-tiny-guest.sh OUTDIR
#
# Writes into OUTDIR:
#   vmlinuz      Debian's cloud kernel (linux-image-cloud-amd64, LZ4: quick to unpack under TCG)
#   initrd.img   gzip'd cpio initramfs: busybox-static, the kernel modules below (dependency order
#                taken from modules.dep at build time), dropbear + dropbearconvert/dropbearkey,
#                qemu-ga when installed, and /init (the whole "OS", see the /init header below)
#   disk.qcow2   small ext4 data disk, label "devenv-data" (made with mkfs.ext4 -d, no mounting);
#                use it as the backing file of a per-machine qcow2 overlay
#   cmdline      kernel command line (console=ttyS0 ...)
#   manifest     what went in (kernel version, modules, sizes)
#
# Needs: the packages scripts/libvirt.sh installs (linux-image-cloud-amd64, busybox-static,
# dropbear-bin, qemu-utils; qemu-guest-agent optional), plus cpio, gzip, mkfs.ext4 (e2fsprogs).
# Does not need root.
set -euo pipefail

die() { printf 'error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'hint: %s\n' "$2" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUT=$1
DISK_SIZE=${DEVENV_GUEST_DISK_SIZE:-64M}

# --- the kernel: newest installed cloud kernel ------------------------------------------------
KVER=${DEVENV_GUEST_KVER:-}
if [ -z "$KVER" ]; then
  KVER=$(ls /boot 2>/dev/null | sed -n 's/^vmlinuz-\(.*-cloud-amd64\)$/\1/p' | sort -V | tail -n 1)
fi
[ -n "$KVER" ] && [ -f "/boot/vmlinuz-$KVER" ] \
  || die "no Debian cloud kernel in /boot" "run scripts/libvirt.sh (installs linux-image-cloud-amd64)"
MODDIR=/lib/modules/$KVER
[ -f "$MODDIR/modules.dep" ] || die "$MODDIR/modules.dep missing" "reinstall linux-image-$KVER"
BUSYBOX=/bin/busybox
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' || BUSYBOX=/usr/bin/busybox
[ -x "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1 || die "no static busybox" "apt-get install busybox-static"
for t in dropbear:/usr/sbin/dropbear dropbearconvert:/usr/bin/dropbearconvert dropbearkey:/usr/bin/dropbearkey; do
  [ -x "${t#*:}" ] || die "${t%%:*} missing" "apt-get install dropbear-bin"
done
for t in cpio gzip mkfs.ext4 qemu-img; do command -v "$t" >/dev/null || die "$t missing" "run scripts/libvirt.sh"; done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tiny-guest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,etc,proc,sys,dev,run,tmp,root,home,data,mnt/seed,var/log,var/lib,lib/modules,usr/share/udhcpc}
chmod 1777 "$ROOT/tmp"; chmod 700 "$ROOT/root"
ln -s ../run "$ROOT/var/run"   # qemu-ga keeps its state in /var/run

# --- busybox + applet symlinks -----------------------------------------------------------------
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  case $applet in busybox) continue ;; esac
  case $applet in
    init|poweroff|reboot|halt|insmod|modprobe|switch_root|acpid|udhcpc|ifconfig|route|mdev|klogd|syslogd|getty|sulogin)
      ln -sf ../bin/busybox "$ROOT/sbin/$applet" ;;
    *) ln -sf busybox "$ROOT/bin/$applet" ;;
  esac
done
mkdir -p "$ROOT/usr/bin" "$ROOT/usr/sbin"

# --- kernel modules, ordered with modules.dep --------------------------------------------------
# Wanted: virtio transport/devices, the cdrom path for the NoCloud seed (virtio-scsi or IDE),
# ACPI power button + evdev (busybox acpid reads /dev/input/event*), virtiofs for shared folders.
# Modules built into this kernel (e.g. ext4) or absent from it (9p: CONFIG_NET_9P is not set in
# Debian's cloud kernel) are skipped and listed in the manifest.
# ata_piix (an IDE cdrom on the i440fx "pc" machine) costs ~0.25 s under TCG: it goes into a
# second list that /init loads only when no seed shows up on virtio-scsi/virtio-blk within ~1 s.
WANT_MODULES=(virtio_pci virtio_blk virtio_net virtio_rng virtio_console virtio_scsi sr_mod isofs
  button evdev 9pnet_virtio 9p virtiofs ext4)
FALLBACK_MODULES=(ata_piix)
declare -A SEEN=()
ORDER=()
dep_path() { # module name -> path relative to MODDIR ('' if not a loadable module)
  local n=${1//-/_}
  awk -F: -v n="$n" '{ p=$1; b=p; sub(/.*\//,"",b); sub(/\.ko(\.(xz|zst|gz))?$/,"",b); gsub(/-/,"_",b);
    if (b==n) { print p; exit } }' "$MODDIR/modules.dep"
}
add_module() { # PATH (relative): dependencies first, then itself
  local path=$1 dep
  [ -n "${SEEN[$path]:-}" ] && return 0
  SEEN[$path]=1
  for dep in $(awk -F: -v p="$path" '$1==p { print $2; exit }' "$MODDIR/modules.dep"); do add_module "$dep"; done
  ORDER+=("$path")
}
SKIPPED=()
want() {
  local m p
  for m in "$@"; do
    p=$(dep_path "$m")
    if [ -n "$p" ]; then add_module "$p"
    elif grep -qE "/${m//_/[_-]}\.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; then SKIPPED+=("$m(built-in)")
    else SKIPPED+=("$m(not-in-kernel)"); fi
  done
}
want "${WANT_MODULES[@]}"
NMAIN=${#ORDER[@]}
want "${FALLBACK_MODULES[@]}"
: >"$ROOT/etc/modules.order"
: >"$ROOT/etc/modules.fallback"
n=0
for p in "${ORDER[@]}"; do
  list=$ROOT/etc/modules.order; [ $n -ge "$NMAIN" ] && list=$ROOT/etc/modules.fallback; n=$((n+1))
  dst=$ROOT/lib/modules/$(basename "$p")
  case $p in   # busybox insmod cannot read compressed modules: unpack them here
    *.ko.xz)  xz -dc "$MODDIR/$p" >"${dst%.xz}"; dst=${dst%.xz} ;;
    *.ko.zst) zstd -qdc "$MODDIR/$p" >"${dst%.zst}"; dst=${dst%.zst} ;;
    *.ko.gz)  gzip -dc "$MODDIR/$p" >"${dst%.gz}"; dst=${dst%.gz} ;;
    *)        cp "$MODDIR/$p" "$dst" ;;
  esac
  echo "/lib/modules/$(basename "$dst")" >>"$list"
done

# --- dynamically linked programs + their libraries (ldd) ---------------------------------------
copy_with_libs() { # SRC DST(relative to ROOT)
  install -D -m 0755 "$1" "$ROOT/$2"
  ldd "$1" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}' | while read -r lib; do
    [ -e "$ROOT$lib" ] && continue
    install -D -m 0755 "$(readlink -f "$lib")" "$ROOT$lib"
  done
}
copy_with_libs /usr/sbin/dropbear usr/sbin/dropbear
copy_with_libs /usr/bin/dropbearconvert usr/bin/dropbearconvert
copy_with_libs /usr/bin/dropbearkey usr/bin/dropbearkey
HAVE_QGA=no
if [ -x /usr/sbin/qemu-ga ]; then copy_with_libs /usr/sbin/qemu-ga usr/sbin/qemu-ga; HAVE_QGA=yes; fi

# --- /etc ---------------------------------------------------------------------------------------
cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
# '*': no password login possible, but the account is not "locked" ('!'), which dropbear refuses
printf 'root:*:19000:0:99999:7:::\n' >"$ROOT/etc/shadow"; chmod 600 "$ROOT/etc/shadow"
printf '/bin/sh\n/bin/ash\n' >"$ROOT/etc/shells"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$ROOT/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n' >"$ROOT/etc/hosts"
printf 'tiny\n' >"$ROOT/etc/hostname"
echo "export PATH=/usr/sbin:/usr/bin:/sbin:/bin" >"$ROOT/etc/profile"

# udhcpc calls this with $1 = deconfig|bound|renew|leasefail|nak and the lease in the environment
cat >"$ROOT/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
    if [ -n "$router" ]; then
      ip route del default 2>/dev/null
      for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    fi
    # One resolver list per interface; a project network's (eth1...) come before QEMU's (eth0),
    # as devenv's seed orders them in its Debian box: the machines' names first.
    : >"/run/resolv.$interface"
    [ -n "$domain" ] && echo "search $domain" >>"/run/resolv.$interface"
    for d in $dns; do echo "nameserver $d" >>"/run/resolv.$interface"; done
    cat $(ls /run/resolv.eth* | grep -v '/run/resolv.eth0$') /run/resolv.eth0 2>/dev/null >/etc/resolv.conf
    ;;
esac
exit 0
EOF
chmod 755 "$ROOT/usr/share/udhcpc/default.script"

# busybox init: only shutdown handling (everything else happens in /init before exec init)
cat >"$ROOT/etc/inittab" <<'EOF'
::ctrlaltdel:/sbin/poweroff
::shutdown:/etc/rc.shutdown
EOF
cat >"$ROOT/etc/rc.shutdown" <<'EOF'
#!/bin/sh
# run by busybox init (SIGUSR2 from `poweroff`, SIGTERM from `reboot`) before it kills everything
echo "devenv-guest: shutting down (uptime $(cut -d" " -f1 /proc/uptime))" >/dev/console
# not acpid: it is the parent of the ACPI handler that may be running us
killall dropbear qemu-ga udhcpc 2>/dev/null
alive() { for p in $(pidof dropbear qemu-ga); do grep -q '^[0-9]* ([^)]*) [^Z]' "/proc/$p/stat" 2>/dev/null && return 0; done; return 1; }
i=0; while [ $i -lt 20 ] && alive; do sleep 0.05; i=$((i+1)); done
echo "devenv-guest: services stopped (uptime $(cut -d" " -f1 /proc/uptime), waited $i)" >/dev/console
sync
for m in /etc/dropbear /home /root /data; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
mount -o remount,ro /data 2>/dev/null
sync
echo "devenv-guest: data disk unmounted (uptime $(cut -d" " -f1 /proc/uptime))" >/dev/console
EOF
chmod 755 "$ROOT/etc/rc.shutdown"
# busybox acpid (default map): the ACPI power button becomes event PWRF/00000080 and runs this.
# It does the clean part itself (stop services, sync, unmount the data disk) and then powers off
# directly: busybox init's own poweroff path sleeps ~2 s in fixed pauses. (`poweroff` typed in
# the guest still goes through init -> /etc/rc.shutdown: same cleanup, just slower.)
mkdir -p "$ROOT/etc/acpi/PWRF"
cat >"$ROOT/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "devenv-guest: ACPI power button (uptime $(cut -d" " -f1 /proc/uptime))" >/dev/console
/etc/rc.shutdown
sync
poweroff -f
EOF
chmod 755 "$ROOT/etc/acpi/PWRF/00000080"

# --- /init -------------------------------------------------------------------------------------
cat >"$ROOT/init" <<'INIT'
#!/bin/sh
# devenv tiny guest: /init (PID 1 from the initramfs). Brings the machine up, then execs busybox
# init, which reaps orphans and handles poweroff/reboot (see /etc/inittab, /etc/rc.shutdown).
#
# Storage: the root filesystem stays the initramfs (tmpfs, reset on every boot). The ext4 disk
# labelled devenv-data (else /dev/vda) is mounted at /data, and these are bind-mounted from it so
# they persist across restarts: /root, /home, /etc/dropbear (host key), plus /data itself.
# Without the disk the guest still boots, with nothing persistent.
#
# NoCloud seed (ISO9660/vfat labelled "cidata", or any cdrom/virtio disk holding meta-data).
# Exactly this subset is read (line-based, not a YAML parser):
#   meta-data:  `instance-id: VALUE`, `local-hostname: VALUE`  (top-level, block style; quotes ok)
#   user-data:  must start with `#cloud-config`; top-level keys
#     `hostname: VALUE`            (overrides local-hostname, as cloud-init does)
#     `ssh_authorized_keys:`       followed by a block list, one `- KEY` per line (indented or not,
#                                  quotes ok); flow lists `[a, b]` are NOT supported
#     `ssh_keys:` / `  ed25519_private: |` (or `|-`): literal block with the OpenSSH private host
#                                  key, converted at boot with dropbearconvert
#   Anything else (users:, runcmd:, write_files:, JSON meta-data, ...) is ignored.
# Keys are applied once per instance-id (remembered on the data disk), like cloud-init's
# per-instance modules; the hostname every boot.
#
# Kernel command line options: devenv.debug=1 (time each module load on the console),
# devenv.shell=1 (a root shell on ttyS0 after boot, for debugging).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
exec </dev/console >/dev/console 2>&1
log() { echo "devenv-guest: $*"; }
log "init started (uptime $(cut -d' ' -f1 /proc/uptime))"

hostname tiny
ip link set lo up

DEBUG=; grep -q 'devenv.debug=1' /proc/cmdline && DEBUG=1
for m in $(cat /etc/modules.order); do
  insmod "$m" 2>/dev/null
  [ -n "$DEBUG" ] && log "  insmod ${m##*/} (uptime $(cut -d' ' -f1 /proc/uptime))"
done
log "modules loaded (uptime $(cut -d' ' -f1 /proc/uptime))"

# --- network: udhcpc in the background on every NIC (eth0: QEMU user networking, 10.0.2.15;
# eth1...: devenv's private networks, whose dnsmasq has the machine's reservation) ---
for nic in /sys/class/net/eth*; do
  nic=${nic##*/}
  ip link set "$nic" up 2>/dev/null
  udhcpc -i "$nic" -b -q -t 20 -T 1 -A 1 -S -s /usr/share/udhcpc/default.script >/dev/null 2>&1
done

# --- data disk ---
wait_dev() { i=0; while [ $i -lt "$2" ]; do [ -b "$1" ] && return 0; sleep 0.1; i=$((i+1)); done; return 1; }
DATA=$(findfs LABEL=devenv-data 2>/dev/null)
[ -z "$DATA" ] && wait_dev /dev/vda 20 && DATA=$(findfs LABEL=devenv-data 2>/dev/null || echo /dev/vda)
if [ -n "$DATA" ] && mount -t ext4 -o noatime "$DATA" /data; then
  for d in root home etc/dropbear var/lib/devenv; do mkdir -p "/data/$d"; done
  chmod 700 /data/root
  mount --bind /data/root /root
  mount --bind /data/home /home
  mkdir -p /etc/dropbear && mount --bind /data/etc/dropbear /etc/dropbear
  STATE=/data/var/lib/devenv
else
  log "no data disk: nothing persists"
  mkdir -p /etc/dropbear /run/devenv
  STATE=/run/devenv
fi

# --- NoCloud seed ---
log "data disk: ${DATA:-none} (uptime $(cut -d' ' -f1 /proc/uptime))"
SEED=
find_seed() {
  d=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null)
  for dev in $d /dev/sr0 /dev/sr1 /dev/vdb /dev/vdc; do
    [ -b "$dev" ] || continue
    mount -o ro "$dev" /mnt/seed 2>/dev/null || continue
    if [ -f /mnt/seed/meta-data ] || [ -f /mnt/seed/user-data ]; then SEED=/mnt/seed; return 0; fi
    umount /mnt/seed
  done
  return 1
}
i=0; while [ $i -lt 10 ] && ! find_seed; do sleep 0.1; i=$((i+1)); done
if [ -z "$SEED" ]; then   # maybe an IDE cdrom: load the fallback modules and look again
  for m in $(cat /etc/modules.fallback); do insmod "$m" 2>/dev/null; done
  i=0; while [ $i -lt 20 ] && ! find_seed; do sleep 0.1; i=$((i+1)); done
fi

# top-level `key: value` of a YAML-ish file (first match; quotes stripped)
yaml_scalar() {
  awk -v k="$1" '
    index($0, k ":") == 1 { v = substr($0, length(k) + 2); sub(/^[ \t]+/, "", v); sub(/[ \t]+$/, "", v)
      sub(/[ \t]+#.*$/, "", v); sub(/\r$/, "", v)
      if (v ~ /^".*"$/ || v ~ /^\047.*\047$/) v = substr(v, 2, length(v) - 2)
      print v; exit }' "$2"
}
# items of the top-level block list `key:` (one per line)
yaml_list() {
  awk -v k="$1" '
    on && /^[ \t]*-[ \t]/ { v = $0; sub(/^[ \t]*-[ \t]+/, "", v); sub(/[ \t\r]+$/, "", v)
      if (v ~ /^".*"$/ || v ~ /^\047.*\047$/) v = substr(v, 2, length(v) - 2)
      print v; next }
    on && /^[ \t]*(#.*)?$/ { next }
    on { exit }
    $0 == k ":" || index($0, k ": ") == 1 && $0 ~ ("^" k ":[ \t]*(#.*)?$") { on = 1 }' "$2"
}
# literal block `sub: |` nested under top-level `top:`, de-indented
yaml_nested_block() {
  awk -v t="$1" -v s="$2" '
    function indent(l) { match(l, /^[ ]*/); return RLENGTH }
    state == 2 { if ($0 ~ /^[ \t]*$/) { print ""; next }
                 if (bi < 0) bi = indent($0)
                 if (indent($0) < bi) exit
                 print substr($0, bi + 1); next }
    state == 1 && /^[^ \t#]/ { exit }
    state == 1 { l = $0; sub(/^[ \t]+/, "", l)
                 if (index(l, s ":") == 1 && l ~ /:[ \t]*\|[-+]?[ \t]*$/) { state = 2; bi = -1 } next }
    $0 ~ ("^" t ":[ \t]*$") { state = 1 }' "$3"
}

NAME=
if [ -n "$SEED" ]; then
  log "NoCloud seed found on $(awk '$2=="/mnt/seed"{print $1}' /proc/mounts)"
  MD=$SEED/meta-data; UD=$SEED/user-data
  IID=; [ -f "$MD" ] && IID=$(yaml_scalar instance-id "$MD") && NAME=$(yaml_scalar local-hostname "$MD")
  if [ -f "$UD" ] && head -n 1 "$UD" | grep -q '^#cloud-config'; then
    H=$(yaml_scalar hostname "$UD"); [ -n "$H" ] && NAME=$H
    if [ ! -f "$STATE/instance-id" ] || [ "$(cat "$STATE/instance-id")" != "$IID" ]; then
      mkdir -p /root/.ssh && chmod 700 /root/.ssh
      yaml_list ssh_authorized_keys "$UD" >/root/.ssh/authorized_keys
      chmod 600 /root/.ssh/authorized_keys
      log "authorized_keys: $(grep -c . /root/.ssh/authorized_keys) key(s)"
      yaml_nested_block ssh_keys ed25519_private "$UD" >/run/hostkey
      if grep -q 'BEGIN OPENSSH PRIVATE KEY' /run/hostkey; then
        if dropbearconvert openssh dropbear /run/hostkey /etc/dropbear/dropbear_ed25519_host_key.new >/dev/null 2>&1; then
          mv /etc/dropbear/dropbear_ed25519_host_key.new /etc/dropbear/dropbear_ed25519_host_key
          log "host key from seed installed"
        else
          log "WARNING: could not convert the seed's ed25519 host key"
        fi
      fi
      rm -f /run/hostkey
      echo "$IID" >"$STATE/instance-id"
    fi
  fi
  umount /mnt/seed
else
  log "no NoCloud seed"
fi
log "seed done (uptime $(cut -d' ' -f1 /proc/uptime))"
[ -n "$NAME" ] || NAME=$(cat /data/etc-hostname 2>/dev/null || echo tiny)
hostname "$NAME"; echo "$NAME" >/etc/hostname
grep -q " $NAME\$" /etc/hosts || echo "127.0.1.1 $NAME" >>/etc/hosts

# --- services ---
[ -f /etc/dropbear/dropbear_ed25519_host_key ] \
  || dropbearkey -t ed25519 -f /etc/dropbear/dropbear_ed25519_host_key >/dev/null 2>&1
# -s: no password logins; -r: the ed25519 host key only
dropbear -s -r /etc/dropbear/dropbear_ed25519_host_key -p 22 -P /run/dropbear.pid

if [ -x /usr/sbin/qemu-ga ]; then
  for p in /sys/class/virtio-ports/*; do
    [ -f "$p/name" ] || continue
    if [ "$(cat "$p/name")" = org.qemu.guest_agent.0 ]; then
      mkdir -p /dev/virtio-ports && ln -sf "../${p##*/}" /dev/virtio-ports/org.qemu.guest_agent.0
      qemu-ga -d -m virtio-serial -p "/dev/${p##*/}" -f /run/qemu-ga.pid -l /var/log/qemu-ga.log
    fi
  done
fi
acpid -c /etc/acpi -l /var/log/acpid.log

# wait (briefly) for the DHCP lease so the marker means "network is up" too
i=0; while [ $i -lt 50 ] && ! ip -4 addr show dev eth0 2>/dev/null | grep -q 'inet '; do sleep 0.1; i=$((i+1)); done
log "uptime=$(cut -d' ' -f1 /proc/uptime)s hostname=$(hostname) ip=$(ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')"
echo "DEVENV-GUEST-READY"
if grep -q 'devenv.shell=1' /proc/cmdline; then
  echo "::respawn:-/bin/sh" >>/etc/inittab   # busybox init: "-" = login shell on the console
fi
exec /sbin/init
INIT
chmod 755 "$ROOT/init"

# --- pack -------------------------------------------------------------------------------------
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner 0:0 --quiet) \
  | gzip -6 -n >"$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
cp "/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
chmod 644 "$OUT/vmlinuz" "$OUT/initrd.img"
# quiet: the emulated UART is slow under TCG, kernel chatter costs boot time
echo "console=ttyS0 quiet loglevel=3 rdinit=/init" >"$OUT/cmdline"

# data disk: ext4 filled from a folder (no mount, no root needed), then qcow2
DISKDIR=$WORK/disk
mkdir -p "$DISKDIR"/{root,home,etc/dropbear,var/lib/devenv}
chmod 700 "$DISKDIR/root"
echo "devenv tiny guest data disk (built $(date -u +%Y-%m-%dT%H:%M:%SZ))" >"$DISKDIR/README"
rm -f "$WORK/disk.raw"
mkfs.ext4 -q -F -L devenv-data -E root_owner=0:0 -d "$DISKDIR" "$WORK/disk.raw" "$DISK_SIZE" >/dev/null
qemu-img convert -q -f raw -O qcow2 "$WORK/disk.raw" "$OUT/disk.qcow2.tmp"
mv "$OUT/disk.qcow2.tmp" "$OUT/disk.qcow2"

{
  echo "kernel $KVER"
  echo "qemu-ga $HAVE_QGA"
  echo "modules ${ORDER[*]:0:NMAIN}" | sed 's#[^ ]*/##g'
  echo "fallback-modules ${ORDER[*]:NMAIN}" | sed 's#[^ ]*/##g'
  echo "skipped ${SKIPPED[*]:-}"
  echo "sizes $(du -b "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/disk.qcow2" | awk '{printf "%s=%s ", $2, $1}')"
} | sed "s#$OUT/##g" >"$OUT/manifest"
cat "$OUT/manifest"
