#!/usr/bin/env bash
# Install the pinned runtime requirements into the active venv.
#
#   bash docker/install-requirements.sh requirements.runpod [TORCH_INDEX_URL]
#
# Without TORCH_INDEX_URL: exactly requirements.runpod, whose torch is PyPI's CUDA 13.0 build (hosts
# need NVIDIA driver r580+). With it, e.g. https://download.pytorch.org/whl/cu128: every pin but
# torch's CUDA stack (torch, torchaudio, triton, nvidia-*, cuda-*), then the same torch and
# torchaudio versions from that index, which bring the CUDA libraries of their build (cu128: CUDA
# 12.8, driver r570+). Deploy such an image with `deploy-runpod.sh --min-cuda-version 12.8`.
set -euo pipefail
requirements="$1"
index="${2:-}"
if [ -z "$index" ]; then
  exec pip install --no-cache-dir -r "$requirements"
fi
case "$index" in
  https://*) ;;
  *) echo "install-requirements: TORCH_INDEX_URL must be an https:// wheel index, got '$index'" >&2; exit 2 ;;
esac
pin() { sed -n "s/^$1==\(.*\)$/\1/p" "$requirements"; }
torch=$(pin torch); torchaudio=$(pin torchaudio)
[ -n "$torch" ] && [ -n "$torchaudio" ] || { echo "install-requirements: no torch/torchaudio pins in $requirements" >&2; exit 1; }
rest=$(mktemp)
grep -vE '^(torch|torchaudio|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' "$requirements" > "$rest"
pip install --no-cache-dir -r "$rest"
pip install --no-cache-dir --index-url "$index" "torch==$torch" "torchaudio==$torchaudio"
rm -f "$rest"
