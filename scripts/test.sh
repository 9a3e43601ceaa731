#!/usr/bin/env bash
# Install what is needed, lint, and run the whole test suite.
#   scripts/test.sh [pytest args]         everything (CI runs this)
#   scripts/test.sh --fast [pytest args]  the inner loop: leaves out the tests marked slow
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check higgs_tts tests handler.py scripts
.venv/bin/lint-imports --no-cache  # the layer contracts in pyproject.toml
if [ "${1:-}" = "--fast" ]; then
  shift
  set -- -m "not slow" "$@"
fi
.venv/bin/python -m pytest "$@"
