#!/usr/bin/env bash
# Install what is needed, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check higgs_tts tests handler.py scripts
.venv/bin/lint-imports --no-cache  # the layer contracts in pyproject.toml
.venv/bin/python -m pytest "$@"
