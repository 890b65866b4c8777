#!/usr/bin/env bash
# Make an OCI registry available for devenv's team-box tests and for trying `devenv box publish`:
# installs Debian's docker-registry (distribution 2.8) when it is missing. It does not start one:
# the tests start their own on 127.0.0.1 (a free port, storage in a temp folder) and stop it; to
# run one by hand:  docker-registry serve CONFIG.yml  (see tests/integration/conftest.py).
# Safe to run again: it only installs what is missing. Needs root to install anything.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

pkg_installed docker-registry || apt_install docker-registry
command -v docker-registry >/dev/null || die "docker-registry is not installed" "apt-get install docker-registry"
