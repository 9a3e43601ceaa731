#!/usr/bin/env bash
# The GPU run rehearsed HERE, on CPU: a Python 3.12 environment holding only an offline GPU
# host's relevant packages at its versions (torch 2.11.0, transformers 5.17, numpy 2.5.2, ...),
# then scripts/gpu-check.sh exactly as such a host runs it (the kit from scripts/gpu-wheels.sh
# installed with --no-index into /tmp/site, no registry). Every stage runs; GPU-only parts say
# "skipped: no CUDA". The environment is kept outside the repository (GPU_DRYRUN_DIR, default
# ~/.cache/higgs-tts-gpu-dryrun: nothing in it travels or is linted) and reused.
#
# Cost, first time: the cp312 torch wheel (~530 MB; its CUDA libraries are borrowed from a local
# Python 3.11 torch 2.11.0 environment when there is one, else downloaded, ~2.7 GB).
set -euo pipefail
cd "$(dirname "$0")/.."

# Usage: scripts/gpu-dryrun.sh [--setup]   (--setup: build the environment only)
PY312="${PY312:-python3.12}"
"$PY312" -V >/dev/null 2>&1 || PY312=$(find /root/.pyenv/versions -path '*3.12*/bin/python3.12' 2>/dev/null | sort | tail -1)
HERE="${GPU_DRYRUN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/higgs-tts-gpu-dryrun}"
VENV="$HERE/venv"
# The offline GPU host's versions besides torch 2.11.0 and torchaudio 2.11.0.
LENT=(transformers==5.17.0 numpy==2.5.2 safetensors==0.8.0 tokenizers==0.23.2
      huggingface_hub==1.33.0 regex jinja2 pyyaml pytest typer tqdm)

"$PY312" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' \
  || { echo "gpu-dryrun: Python 3.12 is required (PY312=$PY312)" >&2; exit 1; }
[ -f .gpu/whl/transformers-5.23.0-py3-none-any.whl ] || scripts/gpu-wheels.sh

if [ ! -f "$VENV/.ready" ]; then
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  borrowed=${CUDA_LIBS_FROM:-.venv/lib/python3.11/site-packages/nvidia}
  [ -d "$borrowed" ] || borrowed=/work/main/.venv/lib/python3.11/site-packages/nvidia
  if [ -d "$borrowed" ]; then
    # torch's CUDA libraries are plain shared objects (py3-none wheels): the same files serve 3.12.
    # They are seen through a folder of their own on sys.path (a .pth file), outside site-packages,
    # so no pip run here can ever write into the environment they belong to.
    "$VENV/bin/pip" install --quiet --no-deps torch==2.11.0 torchaudio==2.11.0
    "$VENV/bin/pip" install --quiet filelock typing-extensions "sympy>=1.13.3" networkx fsspec "setuptools<82"
    mkdir -p "$HERE/cuda-libs"
    ln -sfn "$(realpath "$borrowed")" "$HERE/cuda-libs/nvidia"
    realpath "$HERE/cuda-libs" > "$site/borrowed-cuda-libs.pth"
  else
    "$VENV/bin/pip" install --quiet torch==2.11.0 torchaudio==2.11.0
  fi
  # Nothing below depends on torch, so pip never resolves (downloads) torch's CUDA wheels again.
  "$VENV/bin/pip" install --quiet "${LENT[@]}"
  "$VENV/bin/pip" install --quiet --no-deps accelerate==1.15.0 psutil  # it requires torch: no resolving
  # Pulled in here (by typer) but absent from that host's image: nothing may rely on them.
  "$VENV/bin/pip" uninstall --quiet --yes pydantic pydantic-core annotated-types typing-inspection
  touch "$VENV/.ready"
fi
[ "${1:-}" != --setup ] || exit 0

export OUT="${OUT:-$HERE/out}"
rm -rf "$OUT" /tmp/site
mkdir -p "$OUT"
# python3 is the 3.12 environment's, as it is the image's python on that host.
PATH="$VENV/bin:$PATH" bash scripts/gpu-check.sh
