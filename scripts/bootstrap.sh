#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the package with its test tools; a no-op when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "bootstrap: Python 3.11 is required (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }

stamp=.venv/.installed
want=$(cat pyproject.toml requirements.runpod | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# The runtime dependencies at the image's exact versions (requirements.runpod); test tools float.
.venv/bin/python -m pip install --quiet -c requirements.runpod -e '.[test]'
echo "$want" > "$stamp"
