#!/usr/bin/env bash
# On a CUDA machine: the engine and synthesis tests on the GPU (CUDA graphs against generate()),
# then the benchmark with the full-size random model (batches, and the continuous-batching scheduler
# at CONCURRENCY requests, default 1,8,32,64). Results go to $OUT (default out/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu-check}"
mkdir -p "$OUT"
scripts/bootstrap.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
HIGGS_TEST_DEVICE=cuda .venv/bin/python -m pytest -q tests/engine tests/synthesis \
  2>&1 | tee "$OUT/tests.txt"
.venv/bin/higgs-tts bench --random-weights --concurrency "${CONCURRENCY:-1,8,32,64}" --json > "$OUT/bench.json"
.venv/bin/python -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1])), indent=1))" "$OUT/bench.json"
