#!/usr/bin/env bash
# Set up devenv from this checkout: engines (scripts/engines.sh) and a virtualenv in .venv with
# devenv installed in editable mode (plus test tools with --test).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--test" ]; then bash scripts/engines.sh --for-tests; else bash scripts/engines.sh; fi
# The test suite drives libvirt + QEMU too (real VMs, under emulation when there is no KVM).
if [ "${1:-}" = "--test" ]; then bash scripts/libvirt.sh; fi
# ... and an OCI registry (team boxes: `devenv box publish`, pulls).
if [ "${1:-}" = "--test" ]; then bash scripts/registry.sh; fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "error: devenv needs Python 3.11 or newer ($PY is $("$PY" -V 2>&1))" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv" >&2
  if ! "$PY" -m venv .venv 2>/dev/null; then
    [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$PY" -m venv .venv || { echo "error: cannot create a virtualenv; hint: apt-get install python3-venv" >&2; exit 1; }
  fi
fi
extras=""
[ "${1:-}" = "--test" ] && extras="[test,libvirt,registry]"
echo "==> installing devenv${extras} into .venv" >&2
# compat mode: a plain path entry in a .pth file. The default (an import-hook finder) costs every
# devenv command ~10 ms of start-up, which is most of a Python program's own start.
.venv/bin/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat \
  -e ".${extras}" 2>&1 | grep -v '^WARNING: Location' >&2 || true
# Bytecode now, as a regular install does: with PYTHONDONTWRITEBYTECODE set, every command would
# otherwise compile devenv's modules again (~40 ms).
.venv/bin/python -m compileall -q devenv >/dev/null || true
.venv/bin/devenv --version >/dev/null || { echo "error: devenv did not install" >&2; exit 1; }
