#!/usr/bin/env bash
# Install, then speak a sentence with a cloned voice into out/demo.wav.
# With MODEL_PATH/TOKENIZER_PATH unset it builds the tiny random checkpoint (it speaks noise);
# point them at real weights for real speech.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

if [ -z "${MODEL_PATH:-}" ]; then
  if [ ! -f .cache/tiny/model/config.json ]; then
    .venv/bin/higgs-tts tiny-checkpoint .cache/tiny >/dev/null
  fi
  export MODEL_PATH=.cache/tiny/model TOKENIZER_PATH=.cache/tiny/audio_tokenizer
  echo "demo: using the tiny random checkpoint in .cache/tiny (noise, not speech)" >&2
fi
export VOICE_PROMPTS_PATH="${VOICE_PROMPTS_PATH:-../shared/voice_prompts}"

mkdir -p out
.venv/bin/higgs-tts speak \
  --text "${DEMO_TEXT:-The sun rises in the east and sets in the west.}" \
  --voice "${DEMO_VOICE:-belinda}" --seed 1 --max-new-tokens "${DEMO_MAX_NEW_TOKENS:-2048}" \
  --out out/demo.wav
echo "demo: wrote out/demo.wav" >&2
