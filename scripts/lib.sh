# Shared by scripts/*.sh (sourced): messages, and installing only what is missing from Debian's archive.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'hint: %s\n' "$2" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

pkg_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

apt_install() {
  is_root || die "missing packages: $*" "run this script as root, or: sudo apt-get install -y $*"
  command -v apt-get >/dev/null || die "missing packages: $* (and no apt-get here)" "install them with your package manager"
  log "installing $* (apt-get)"
  if [ -z "${DEVENV_APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null
    export DEVENV_APT_UPDATED=1
  fi
  # NEEDRESTART_SUSPEND: Debian's needrestart hook otherwise chatters (and may prompt) after installs
  DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq --no-install-recommends "$@" 2>&1 >/dev/null \
    | grep -v "^debconf: delaying package configuration" >&2 || true
  for p in "$@"; do pkg_installed "$p" || die "apt-get could not install $p" "run: apt-get install $p"; done
}
