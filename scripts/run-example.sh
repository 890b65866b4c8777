#!/usr/bin/env bash
# The main job on a fresh machine: set everything up, bring Devfile.example up on the Docker
# engine, and show its status. `.venv/bin/devenv -f Devfile.example destroy -f` removes it again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/devenv -f Devfile.example up
.venv/bin/devenv -f Devfile.example status
