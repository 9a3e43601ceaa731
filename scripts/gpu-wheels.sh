#!/usr/bin/env bash
# For a GPU host that reaches no package registry, run on a machine that does: fills .gpu/ (ignored
# by git) with what such a host lacks, so that scripts/gpu-check.sh runs there with no registry.
#
#   .gpu/whl/*.whl        cp312 manylinux wheels, at requirements.runpod's versions:
#                         transformers (the machine has 5.17; we need 5.23), regex (transformers
#                         5.23 asks for >=2025.10.22), soundfile + cffi + pycparser (voice clips),
#                         langid (built here with `pip wheel`: it is an sdist)
#   .gpu/voice_prompts/   the test voices (tests find them through HIGGS_SHARED_DIR=.gpu)
#
# What such a host is expected to have already, and we use as it is there: torch 2.11.0+cu130,
# torchaudio, numpy, safetensors, tokenizers, huggingface_hub, typer, tqdm, pyyaml, jinja2,
# pytest. Not carried: jieba (~19 MB of dictionary; only Chinese text chunking imports it, and no
# GPU stage does) and the serving stack (pydantic, fastapi, av, boto3, runpod: no GPU stage
# imports it). The total is printed; it must stay under 40 MiB (the working tree and carried
# paths stay within 64 MiB to copy).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
SHARED="${HIGGS_SHARED_DIR:-../shared}"
KIT=.gpu
LIMIT_MIB=40

pin() {  # the exact requirement line requirements.runpod has for a package
  grep -iE "^$1==" requirements.runpod || { echo "gpu-wheels: $1 is not pinned in requirements.runpod" >&2; exit 1; }
}

rm -rf "$KIT/whl" "$KIT/voice_prompts"
mkdir -p "$KIT/whl"
# Binary wheels for the GPU host's interpreter (CPython 3.12, x86-64 Linux), whatever runs here.
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$KIT/whl" "$(pin transformers)" "$(pin regex)" "$(pin soundfile)" "$(pin cffi)" "$(pin pycparser)"
# langid is published as an sdist only: build its (pure-Python) wheel here.
"$PYTHON" -m pip wheel --quiet --no-deps -w "$KIT/whl" "$(pin langid)"

if [ ! -f "$SHARED/voice_prompts/belinda.wav" ]; then
  echo "gpu-wheels: no voices under $SHARED/voice_prompts (set HIGGS_SHARED_DIR)" >&2
  exit 1
fi
cp -r "$SHARED/voice_prompts" "$KIT/voice_prompts"

ls -1 "$KIT/whl"
total=$(du -sb "$KIT" | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "gpu-wheels: $KIT holds $((total / 1024)) KiB (limit ${LIMIT_MIB} MiB); the tracked tree $((tree / 1024)) KiB"
echo "gpu-wheels: together $(((total + tree) / 1024)) KiB of the 64 MiB that travel"
if [ "$total" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "gpu-wheels: $KIT is over ${LIMIT_MIB} MiB" >&2
  exit 1
fi
