#!/usr/bin/env bash
# Build the worker image, check its size, smoke-test it, and write the RunPod configuration.
#
#   ./scripts/deploy-runpod.sh --image docker.io/you/higgs-tts:0.1.0                 # build + check + config
#   ./scripts/deploy-runpod.sh --image docker.io/you/higgs-tts:0.1.0 --push --create # and deploy
#
# Flags: --image NAME (or IMAGE), --base-image IMG (BASE_IMAGE build arg), --push, --create (needs
# RUNPOD_API_KEY), --skip-build, --skip-smoke, --max-size-gb N (default 5), --out DIR (default
# ./deploy), --streaming (workers start with STREAMING=1), --endpoint-type queue|lb (queue: the SDK
# worker, the default; lb: a load balancer over the HTTP server), --min-cuda-version V (13.0),
# --torch-index-url URL (TORCH_INDEX_URL build arg, e.g. .../whl/cu128; then --min-cuda-version 12.8),
# --cached-model (the model from RunPod's cached models: set the endpoint's Model field to the repo
# printed; without NETWORK_VOLUME_ID the codec is downloaded at start-up; docs/deploy-cached-models.md).
# Settings (environment): NETWORK_VOLUME_ID, WORKERS_MIN (0), WORKERS_MAX (3), IDLE_TIMEOUT (5),
# GPU_POOLS (comma-separated serverless GPU pool ids; default every pool with 24 GB or more).
# Writes DIR/runpod-config.json and DIR/test-endpoint.sh (and DIR/runpod-endpoint.json after --create).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

image="${IMAGE:-}"; base_image=""; push=0; create=0; build=1; smoke=1; max_gb=5; out="deploy"; streaming=()
endpoint_type="queue"; min_cuda="13.0"; torch_index=""; cached_model=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --image|--base-image|--max-size-gb|--out|--endpoint-type|--min-cuda-version|--torch-index-url)
      [ $# -ge 2 ] || { echo "deploy-runpod: $1 needs a value" >&2; exit 2; }
      case "$1" in
        --image) image="$2" ;; --base-image) base_image="$2" ;; --max-size-gb) max_gb="$2" ;; --out) out="$2" ;;
        --endpoint-type) endpoint_type="$2" ;; --min-cuda-version) min_cuda="$2" ;;
        --torch-index-url) torch_index="$2" ;;
      esac
      shift 2 ;;
    --push) push=1; shift ;;
    --create) create=1; shift ;;
    --skip-build) build=0; shift ;;
    --skip-smoke) smoke=0; shift ;;
    --streaming) streaming=(--streaming); shift ;;
    --cached-model) cached_model=(--cached-model); shift ;;
    *) echo "deploy-runpod: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$endpoint_type" in queue|lb) ;; *) echo "deploy-runpod: --endpoint-type is queue or lb" >&2; exit 2 ;; esac
[ -n "$image" ] || { echo "deploy-runpod: --image (or IMAGE) is required, e.g. docker.io/you/higgs-tts:0.1.0" >&2; exit 2; }
if [ "$create" = 1 ] && [ -z "${RUNPOD_API_KEY:-}" ]; then
  echo "deploy-runpod: --create needs RUNPOD_API_KEY (RunPod console: Settings > API Keys)" >&2; exit 2
fi

python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in "$root/.venv/bin/python" /opt/venv/bin/python; do
    if [ -x "$candidate" ]; then python="$candidate"; break; fi
  done
fi
if [ -z "$python" ] || ! "$python" -c 'import higgs_tts' >/dev/null 2>&1; then
  echo "deploy-runpod: no Python with higgs_tts installed; run scripts/bootstrap.sh first or set PYTHON" >&2
  exit 1
fi

need_docker() {
  command -v docker >/dev/null 2>&1 || { echo "deploy-runpod: docker is not installed" >&2; exit 1; }
  docker info >/dev/null 2>&1 || { echo "deploy-runpod: no Docker daemon is reachable (is it running?)" >&2; exit 1; }
}

if [ "$build" = 1 ]; then
  need_docker
  build_args=()
  [ -z "$base_image" ] || build_args+=(--build-arg "BASE_IMAGE=$base_image")
  [ -z "$torch_index" ] || build_args+=(--build-arg "TORCH_INDEX_URL=$torch_index")
  echo "== building $image"
  docker build "${build_args[@]}" -t "$image" "$root"
fi

if [ "$build" = 1 ] || [ "$smoke" = 1 ] || [ "$push" = 1 ]; then
  need_docker
  size=$(docker image inspect -f '{{.Size}}' "$image")
  limit=$(( max_gb * 1000 * 1000 * 1000 ))
  echo "== image size: $(( size / 1000 / 1000 )) MB (limit ${max_gb} GB)"
  if [ "$size" -gt "$limit" ]; then
    echo "deploy-runpod: $image is $(( size / 1000 / 1000 )) MB, above the ${max_gb} GB limit" >&2; exit 1
  fi
fi

if [ "$smoke" = 1 ]; then
  echo "== smoke test: one job on a tiny random checkpoint mounted as the volume"
  volume=$(mktemp -d)
  trap 'rm -rf "$volume"' EXIT
  run=(docker run --rm --user "$(id -u):$(id -g)" -v "$volume:/runpod-volume" -e HOME=/tmp)
  "${run[@]}" "$image" python -m higgs_tts.cli tiny-checkpoint /runpod-volume/tiny >/dev/null
  mkdir -p "$volume/voice_prompts"
  job='{"input": {"transcript": "Smoke test.", "max_new_tokens": 30, "seed": 1}}'
  result=$("${run[@]}" -e MODEL_PATH=/runpod-volume/tiny/model -e TOKENIZER_PATH=/runpod-volume/tiny/audio_tokenizer \
    -e PRELOAD_MODEL=0 "$image" python handler.py --test_input "$job" 2>&1) || true
  if ! grep -q "'success': True" <<<"$result"; then
    echo "$result" | tail -20 >&2
    echo "deploy-runpod: the containerized worker did not complete the test job" >&2; exit 1
  fi
  echo "smoke test passed"
fi

mkdir -p "$out"
"$python" -m higgs_tts.deploy.runpod config --image "$image" --volume-id "${NETWORK_VOLUME_ID:-}" \
  --workers-min "${WORKERS_MIN:-0}" --workers-max "${WORKERS_MAX:-3}" --idle-timeout "${IDLE_TIMEOUT:-5}" \
  --endpoint-type "$endpoint_type" --min-cuda-version "$min_cuda" "${streaming[@]}" "${cached_model[@]}" \
  > "$out/runpod-config.json"
echo "== wrote $out/runpod-config.json"
if [ ${#cached_model[@]} -gt 0 ]; then
  repo=$("$python" -c 'from higgs_tts.deploy.runpod import CACHED_MODEL; print(CACHED_MODEL)')
  echo "cached model: set the endpoint's Model field to $repo (console: Manage > Edit Endpoint > Model)"
  [ -n "${NETWORK_VOLUME_ID:-}" ] || echo "note: no NETWORK_VOLUME_ID: the codec is downloaded when a worker starts"
elif [ -z "${NETWORK_VOLUME_ID:-}" ]; then
  echo "note: NETWORK_VOLUME_ID is not set; the endpoint would have no models (or use --cached-model)"
fi

if [ "$push" = 1 ]; then
  echo "== pushing $image"
  docker push "$image"
fi

endpoint_url="https://api.runpod.ai/v2/ENDPOINT_ID"
[ "$endpoint_type" = queue ] || endpoint_url="https://ENDPOINT_ID.api.runpod.ai"  # a load balancer's own host
if [ "$create" = 1 ]; then
  # RunPod REST API v2 (https://api.runpod.io/v2; RUNPOD_REST_URL overrides it): one POST /v2/serverless
  # with the config file as its body. No template is created: v2 takes image, disk and env inline.
  echo "== creating the endpoint (RunPod REST API v2: POST /v2/serverless)"
  "$python" -m higgs_tts.deploy.runpod create "$out/runpod-config.json" > "$out/runpod-endpoint.json.tmp" \
    || { rm -f "$out/runpod-endpoint.json.tmp"; exit 1; }
  mv "$out/runpod-endpoint.json.tmp" "$out/runpod-endpoint.json"
  endpoint_url=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["endpoint_url"])' \
    "$out/runpod-endpoint.json")
  echo "endpoint: $endpoint_url"
fi

cat > "$out/test-endpoint.sh" <<SCRIPT
#!/usr/bin/env bash
# Run the API checks against the endpoint this deployment created (RUNPOD_API_KEY from the environment).
set -euo pipefail
export ENDPOINT_URL="\${ENDPOINT_URL:-$endpoint_url}"
exec "$root/scripts/test-runpod-api.sh" "\$@"
SCRIPT
chmod +x "$out/test-endpoint.sh"
echo "== wrote $out/test-endpoint.sh"
