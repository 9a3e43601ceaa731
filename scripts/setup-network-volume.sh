#!/usr/bin/env bash
# Put the model, the codec and the example voices on a RunPod network volume.
#
# Run it where the volume is mounted (a pod with the volume attached, using the worker image,
# where this script is /app/scripts/setup-network-volume.sh):
#   ./scripts/setup-network-volume.sh     # VOLUME_DIR: the mounted volume, /runpod-volume or /workspace
# or anywhere, staging locally and uploading through RunPod's S3-compatible API:
#   VOLUME_DIR=./volume NETWORK_VOLUME_ID=... RUNPOD_S3_REGION=EUR-IS-1 \
#   RUNPOD_S3_ACCESS_KEY=... RUNPOD_S3_SECRET_KEY=... ./scripts/setup-network-volume.sh --upload
#
# Settings (environment): VOLUME_DIR, MODEL_REPO, MODEL_REVISION, TOKENIZER_REPO,
# TOKENIZER_REVISION, HF_TOKEN, VOICES_SOURCE (a local folder instead of downloading the voices).
# A second run downloads nothing. Legacy-format revisions are converted to the native layout.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  echo "Flags: --volume-dir DIR, --model-repo REPO, --model-revision REV, --tokenizer-repo REPO,"
  echo "       --tokenizer-revision REV, --voices-source DIR, --upload"
}

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --volume-dir|--model-revision|--tokenizer-revision|--voices-source|--model-repo|--tokenizer-repo)
      [ $# -ge 2 ] || { echo "setup-network-volume: $1 needs a value" >&2; exit 2; }
      args+=("$1" "$2"); shift 2 ;;
    --upload) args+=("$1"); shift ;;
    *) echo "setup-network-volume: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# The Python that has this project installed: $PYTHON, the image's venv, or the repo's .venv.
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in /opt/venv/bin/python "$here/.venv/bin/python"; do
    if [ -x "$candidate" ]; then python="$candidate"; break; fi
  done
fi
if [ -z "$python" ] || ! "$python" -c 'import higgs_tts, huggingface_hub' >/dev/null 2>&1; then
  echo "setup-network-volume: no Python with higgs_tts installed; run scripts/bootstrap.sh first," \
       "set PYTHON, or run this inside the worker image" >&2
  exit 1
fi

export HF_HUB_DISABLE_TELEMETRY=1
exec "$python" -m higgs_tts.deploy.volume "${args[@]}"
