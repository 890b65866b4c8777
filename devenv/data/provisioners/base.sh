#!/bin/sh
# Base setup shared by dev machines and boxes: a login user and a profile. Idempotent.
set -eu
user="${1:-dev}"
case "$user" in ""|*[!a-z0-9_-]*) echo "base.sh: '$user' is not a login name" >&2; exit 2;; esac
if ! id "$user" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$user"
  echo "created user $user"
fi
# Passwordless sudo for the login user where the box has sudo, as Vagrant boxes do for vagrant.
if command -v sudo >/dev/null 2>&1; then
  mkdir -p /etc/sudoers.d
  printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$user" > "/etc/sudoers.d/90-devenv-$user"
  chmod 0440 "/etc/sudoers.d/90-devenv-$user"
fi
cat > /etc/profile.d/devenv.sh <<'PROFILE'
export EDITOR=vi
alias ll='ls -la'
PROFILE
echo "base provisioning done for $(hostname)"
