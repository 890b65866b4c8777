#!/usr/bin/env bash
# Make libvirt + QEMU available for devenv's libvirt driver and its tests:
# installs what is missing (apt-get), starts virtlogd and libvirtd when they are not running
# (detached with setsid: there is no init system on our CI machines), and waits until
# `virsh -c qemu:///system version` answers.
# Also installs what tests/guest/build-tiny-guest.sh needs (Debian's cloud kernel, busybox-static,
# dropbear, genisoimage, qemu-guest-agent).
# Safe to run again: it only does what is missing. Needs root to install or start anything.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

PACKAGES=(
  libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils libvirt-dev pkg-config
  genisoimage dropbear-bin busybox-static linux-image-cloud-amd64 qemu-guest-agent
  syslinux syslinux-common mtools dosfstools fdisk
  dnsmasq-base iptables  # private networks: libvirt runs dnsmasq on each bridge and sets firewall rules
)

VIRSH_URI=qemu:///system
libvirt_answers() { command -v virsh >/dev/null && timeout 10 virsh -c "$VIRSH_URI" version >/dev/null 2>&1; }

# true when the daemon named $1 runs with the pid in pid file $2
daemon_running() {
  local pid
  [ -r "$2" ] && pid=$(cat "$2" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && grep -q "$1" "/proc/$pid/comm" 2>/dev/null
}

start_daemon() { # NAME PIDFILE
  local name=$1 pidfile=$2
  if daemon_running "$name" "$pidfile"; then return; fi
  if pgrep -x "$name" >/dev/null 2>&1; then return; fi   # running, started some other way
  log "starting $name (pid file $pidfile)"
  rm -f "$pidfile"
  # -d daemonises; setsid so it is not tied to this shell's session (one started without it
  # exited by itself minutes later).
  setsid "$name" -d -p "$pidfile" </dev/null >/dev/null 2>&1 \
    || die "$name did not start" "run it in the foreground to see why: $name -v"
}

missing=()
for p in "${PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi

if libvirt_answers; then log "libvirtd is running ($VIRSH_URI answers)"; exit 0; fi
if ! is_root; then
  if daemon_running libvirtd /run/libvirtd.pid || pgrep -x libvirtd >/dev/null 2>&1; then
    die "libvirtd is running but $(id -un) cannot use $VIRSH_URI" \
      "run as root, or add yourself to the libvirt group: sudo adduser $(id -un) libvirt (then log in again)"
  fi
  die "libvirtd is installed but not running" "start it as root: sudo bash $0 (or sudo systemctl start libvirtd)"
fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  log "starting virtlogd and libvirtd (systemctl)"
  systemctl start virtlogd libvirtd || true
fi
if ! libvirt_answers; then
  start_daemon virtlogd /run/virtlogd.pid
  start_daemon libvirtd /run/libvirtd.pid
fi
for _ in $(seq 1 60); do
  libvirt_answers && { log "libvirtd is running ($VIRSH_URI answers)"; exit 0; }
  sleep 0.5
done
die "libvirtd did not answer on $VIRSH_URI within 30 s" "run it in the foreground to see why: libvirtd -v"
