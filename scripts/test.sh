#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up engines and the venv, lint, run every test.
# With CI=true a missing engine fails the run instead of skipping. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
echo "==> ruff" >&2
.venv/bin/ruff check devenv tests bench
# The architecture as rules: layers and forbidden imports (pyproject [tool.importlinter]), and
# the types of the contract and the core (pyproject [tool.mypy]).
echo "==> lint-imports" >&2
.venv/bin/lint-imports
echo "==> mypy (contract + core)" >&2
.venv/bin/mypy
echo "==> pytest" >&2
exec .venv/bin/python -m pytest "$@"
