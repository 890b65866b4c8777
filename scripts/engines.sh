#!/usr/bin/env bash
# Make the engines devenv's tests and example need available on this machine:
# the Docker engine (installed from Debian's docker.io when missing, started when not running),
# plus the host tools boxes are built with (debootstrap, busybox-static) and the package cache
# every machine shares (apt-cacher-ng).
# Safe to run again: it only does what is missing. Needs root to install or start anything.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

docker_answers() {
  if command -v docker >/dev/null; then
    timeout 10 docker info >/dev/null 2>&1
  else
    timeout 10 python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect("/var/run/docker.sock"); s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n"); sys.exit(0 if b"OK" in s.recv(200) else 1)' 2>/dev/null
  fi
}

ensure_host_tools() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ! { [ -x /bin/busybox ] && ! file -L /bin/busybox 2>/dev/null | grep -q 'dynamically'; }; then
    dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  fi
  command -v file >/dev/null || missing+=(file)
  command -v rsync >/dev/null || missing+=(rsync)
  local fresh_cache=0
  if ! [ -x /usr/sbin/apt-cacher-ng ]; then missing+=(apt-cacher-ng); fresh_cache=1; fi
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
  if [ "$fresh_cache" = 1 ]; then quiet_system_cache; fi
}

quiet_system_cache() {
  # devenv runs its own apt-cacher-ng (the package cache), on 127.0.0.1 and the Docker bridge only.
  # Debian's package also enables a system-wide one on every interface: on a host with systemd,
  # the one we just installed is stopped and disabled again (a cache that was there stays as it was).
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now apt-cacher-ng >/dev/null 2>&1 || true
    log "apt-cacher-ng installed for devenv's package cache; its system service (all interfaces) is disabled"
  fi
}

ensure_docker() {
  if [ -n "${DOCKER_HOST:-}" ]; then
    docker_answers || die "the Docker engine at DOCKER_HOST=$DOCKER_HOST does not answer" "start it there, or unset DOCKER_HOST"
    log "Docker engine at $DOCKER_HOST answers"
    return
  fi
  if docker_answers; then log "Docker engine is running"; return; fi
  if ! command -v dockerd >/dev/null; then
    apt_install docker.io
  fi
  is_root || die "the Docker engine is installed but not running" "start it: sudo systemctl start docker (or sudo dockerd)"
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    log "starting docker (systemctl)"
    systemctl start docker || true
  fi
  if ! docker_answers; then
    # No init system here (containers, CI machines): run the daemon ourselves, detached with setsid
    # so it outlives this shell, logging to a file.
    log "starting dockerd (log: /var/log/devenv-dockerd.log)"
    rm -f /var/run/docker.pid
    setsid dockerd >/var/log/devenv-dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 120); do
    docker_answers && { log "Docker engine is running"; return; }
    sleep 0.5
  done
  tail -n 20 /var/log/devenv-dockerd.log >&2 || true
  die "dockerd did not come up within 60 s" "see /var/log/devenv-dockerd.log"
}

ensure_vagrant() {
  # Vagrant for the bridge driver's tests (it runs Vagrant's docker provider on the engine above).
  if command -v vagrant >/dev/null; then log "Vagrant is installed"; return; fi
  apt_install vagrant
}

ensure_host_tools
ensure_docker
ensure_sshd_binary() {
  # The remote-engine tests start their own sshd on 127.0.0.1 (never the system's): they need the binary.
  if [ -x /usr/sbin/sshd ]; then log "sshd is installed"; return; fi
  apt_install openssh-server
}

case " $* " in *" --with-vagrant "* | *" --for-tests "*) ensure_vagrant ;; esac
case " $* " in *" --for-tests "*) ensure_sshd_binary ;; esac
