#!/usr/bin/env bash
# Check a deployed endpoint (or the local `handler.py --rp_serve_api` server) end to end.
#
#   ENDPOINT_URL=https://api.runpod.ai/v2/ENDPOINT_ID RUNPOD_API_KEY=... ./scripts/test-runpod-api.sh
#   ENDPOINT_URL=http://localhost:8000 ./scripts/test-runpod-api.sh
#
# Cases: health, basic speech, clone + scene, long text, S3 upload (when S3_BUCKET is set), and one
# bad request that must fail. Audio goes to OUT_DIR (default ./api-test-output). One PASS/FAIL line
# per case; the exit status is non-zero when any case failed. Needs only python3 (standard library).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
: "${ENDPOINT_URL:?set ENDPOINT_URL to https://api.runpod.ai/v2/ENDPOINT_ID or http://localhost:8000}"
command -v python3 >/dev/null 2>&1 || { echo "test-runpod-api: python3 is required" >&2; exit 1; }
exec python3 "$here/runpod_api_check.py"
