#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up engines and the venv, lint, run every test.
# With CI=true a missing engine fails the run instead of skipping. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
echo "==> ruff" >&2
.venv/bin/ruff check devenv tests bench
echo "==> pytest" >&2
exec .venv/bin/python -m pytest "$@"
