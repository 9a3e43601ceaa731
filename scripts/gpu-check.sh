#!/usr/bin/env bash
# On any CUDA host (docs/engine.md, "Checking the engine on a GPU"): the stages, each under its
# own `timeout`, none stopping the run, the whole within GPU_CHECK_SECONDS (default 470 s), with
# PYTHON (default python3) holding the project's dependencies. A host that reaches no package
# registry gets what it lacks from .gpu/ (scripts/gpu-wheels.sh), installed here with no registry.
# Files in $OUT (at most 8): log.txt (the tee in the docs' command), results.jsonl,
# anatomy.json, bench.json, bench.log, tests.txt, profile.txt. The summary table is printed last.
#
#   1 env     GPU, driver, clocks, versions (carried transformers shadows the system one?), SDPA kernels
#   2 smoke   full-size random model, bf16: graph vs eager step, graphs on/off codes, teacher-forced
#             agreement with transformers' forward, NaN, memory, graph capture at default slots and 64
#   3 timing  CUDA events at 1 and 64 rows (replay, sampler, burst, host share), kernels per step
#   4 anatomy higgs-tts bench --anatomy --random-weights: kernels per layer and step, syncs, frames/s
#             at batch 1 and its share of the roofline
#   5 bench   higgs-tts bench --random-weights, batches 1,8,32,64, concurrency 8,64, streamed TTFA
#   6 tests   tests/engine, tests/synthesis and tests/tools/test_bench.py on the GPU
#
# Without CUDA (scripts/gpu-dryrun.sh) every stage runs on the tiny checkpoint on CPU and the
# GPU-only parts say "skipped: no CUDA".
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

started=$(date +%s)
budget=${GPU_CHECK_SECONDS:-470}
export OUT="${OUT:-out/gpu-check}"
mkdir -p "$OUT"
rm -f "$OUT/results.jsonl"
SITE=${GPU_SITE:-/tmp/site}
PYTHON=${PYTHON:-python3}

if [ -d .gpu/whl ]; then  # the kit from scripts/gpu-wheels.sh, with the tests' voices
  if ! "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .gpu/whl/*.whl; then
    echo "gpu-check: installing .gpu/whl failed (run scripts/gpu-wheels.sh again)" >&2
  fi
  export HIGGS_SHARED_DIR="$PWD/.gpu"
fi
export PYTHONPATH="$SITE:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
if "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  cuda=1 device=cuda
else
  cuda=0 device=cpu
fi
echo "gpu-check: $("$PYTHON" -V 2>&1), device $device, budget ${budget} s, results in $OUT"
export cuda device PYTHON  # the stages below run as `bash -c` functions: they see exported names only

stages=()
# stage NAME SECONDS COMMAND... (a program; functions through bash -c): at most SECONDS, and never past the budget (30 s kept for the summary).
stage() {
  local name=$1 limit=$2 left rc status
  shift 2
  left=$((budget - 30 - ($(date +%s) - started)))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 10 ]; then
    stages+=("$name skipped: out of time")
    return
  fi
  echo "== gpu-check: $name (at most ${limit} s)"
  local t0
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@"
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="TIMEOUT(${limit}s)" ;;
    *) status="FAIL(rc=$rc)" ;;
  esac
  stages+=("$name $status in $(($(date +%s) - t0)) s")
}

stage env 30 "$PYTHON" scripts/gpu_stages.py env
[ "$cuda" = 0 ] || nvidia-smi
stage smoke 120 "$PYTHON" scripts/gpu_stages.py smoke
stage timing 75 "$PYTHON" scripts/gpu_stages.py timing

anatomy() {
  if [ "$cuda" = 1 ]; then
    "$PYTHON" -m higgs_tts.cli bench --random-weights --anatomy --json
  else  # the tiny checkpoint as deep as the real model
    local tiny=/tmp/gpu-check-tiny
    [ -d "$tiny/model" ] || "$PYTHON" -m higgs_tts.cli tiny-checkpoint "$tiny" >&2 || return 1
    MODEL_PATH=$tiny/model TOKENIZER_PATH=$tiny/audio_tokenizer "$PYTHON" -m higgs_tts.cli bench --anatomy \
      --layers 28 --json
  fi
}
anatomy_to_file() { anatomy > "$OUT/anatomy.json" 2>> "$OUT/bench.log"; }
export -f anatomy anatomy_to_file
stage anatomy $((cuda ? 60 : 150)) bash -c anatomy_to_file

bench() {
  if [ "$cuda" = 1 ]; then
    "$PYTHON" -m higgs_tts.cli bench --random-weights --batch-sizes 1,8,32,64 --concurrency 8,64 --json
  else  # the same command's path on the tiny checkpoint, few steps
    local tiny=/tmp/gpu-check-tiny
    [ -d "$tiny/model" ] || "$PYTHON" -m higgs_tts.cli tiny-checkpoint "$tiny" >&2 || return 1
    MODEL_PATH=$tiny/model TOKENIZER_PATH=$tiny/audio_tokenizer "$PYTHON" -m higgs_tts.cli bench --json \
      --steps 16 --reference-steps 4 --batch-sizes 1,8 --concurrency 8
  fi
}
bench_to_files() { bench > "$OUT/bench.json" 2>> "$OUT/bench.log"; }
export -f bench bench_to_files
stage bench 170 bash -c bench_to_files
tail -n 5 "$OUT/bench.log"

tests_to_file() {
  HIGGS_TEST_DEVICE=$device "$PYTHON" -m pytest -q -p no:cacheprovider tests/engine tests/synthesis \
    tests/tools/test_bench.py > "$OUT/tests.txt" 2>&1
}
export -f tests_to_file
stage tests $((cuda ? 160 : 300)) bash -c tests_to_file  # 2 CPU cores need longer than a GPU machine
tail -n 15 "$OUT/tests.txt"

summary=$(IFS=';'; echo "${stages[*]}")
"$PYTHON" scripts/gpu_stages.py summary --stages "$summary"
echo "gpu-check: $(($(date +%s) - started)) s in all"
