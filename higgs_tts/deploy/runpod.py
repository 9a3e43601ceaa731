"""RunPod serverless endpoint: the configuration file, and creating the endpoint through RunPod's REST API v2.

    python -m higgs_tts.deploy.runpod config --image IMAGE --volume-id ID > runpod-config.json
    python -m higgs_tts.deploy.runpod create runpod-config.json          (needs RUNPOD_API_KEY)

`runpod-config.json` is the request body of `POST https://api.runpod.io/v2/serverless` as it is sent:
REST v2 takes the container settings (image, disk, env) inline in the endpoint body, so no template is
created. Field names follow RunPod's v2 reference, "Create a serverless endpoint"
(https://docs.runpod.io/api-reference-v2/serverless/create-a-serverless-endpoint, `CreateEndpointRequest`),
and the v1 -> v2 migration guide (https://docs.runpod.io/api-reference-v2/migrate-from-v1). REST v1
(`https://rest.runpod.io/v1`, POST /templates + POST /endpoints) is retired.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request

from ..settings import DEFAULT_MODEL

REST_URL = "https://api.runpod.io/v2"
ENDPOINTS_PATH = "/serverless"
VOLUME = "/runpod-volume"

# Serverless GPU *pool* ids with 24 GB and more (the model needs about 12 GB in bf16 plus its caches).
# v2's `gpu.pools` takes pool ids, the `pool` field of GET /v2/catalog/gpus, not GPU type names. The v2
# reference shows only "ADA_24" as an example; the other ids are RunPod's own pool names (runpod-python
# and Flash `GpuGroup`, and this repo's .runpod/hub.json). These pools hold the cards of the former v1
# list: RTX 4090 and L4, RTX A5000 (and RTX 3090), RTX A6000 (and A40), L40S and RTX 6000 Ada (and L40),
# A100 80GB, H100, H200.
GPU_POOLS_24GB_UP = ["ADA_24", "AMPERE_24", "AMPERE_48", "ADA_48_PRO", "AMPERE_80", "ADA_80_PRO", "HOPPER_141"]
POOL_ID = re.compile(r"^[A-Z][A-Z0-9_]*$")

# torch 2.11's PyPI build is for CUDA 13.0: hosts need a driver that supports it (r580+). v2's
# `gpu.minCudaVersion` admits that version and every newer one, as RunPod advises; `allowedCudaVersions`
# would match an exact list (13.1+ hosts excluded), and the two are exclusive. An image built with
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (docs/deploy.md, build args) runs on CUDA 12.8+ hosts
# (driver r570+): deploy it with --min-cuda-version 12.8.
MIN_CUDA_VERSION = "13.0"
CUDA_VERSIONS = ("11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7", "12.8", "12.9", "13.0")

# Endpoint types: a queue (the SDK worker: /run, /runsync, /status, /stream) or a load balancer, whose
# workers run the HTTP server (MODE=http) reached directly at https://ENDPOINT_ID.api.runpod.ai/...:
# the OpenAI routes under /v1 and the same job routes. RunPod checks /ping on PORT_HEALTH.
ENDPOINT_TYPES = {"queue": "QUEUE", "lb": "LOAD_BALANCER"}
# The repo to name in the endpoint's Model field (RunPod's cached models; one repo per endpoint): the
# model, most of the weights. The codec comes from the volume, or is downloaded at start-up.
CACHED_MODEL = DEFAULT_MODEL
# RunPod sends a load balancer's requests to PORT (80 when unset) and checks /ping on PORT_HEALTH
# (PORT when unset); the config sets both to the server's own default instead of relying on 80.
HTTP_PORT = 8000

# v2 bounds `workers.idleTimeout` to 1..3600 seconds.
IDLE_TIMEOUT_RANGE = (1, 3600)


class DeployError(RuntimeError):
    pass


def worker_env(streaming: bool = False, endpoint_type: str = "queue", downloads: bool = False) -> dict[str, str]:
    """The worker's environment on RunPod: voices and caches on the network volume. No MODEL_PATH /
    TOKENIZER_PATH: the default repos are found on the volume (models/NAME) or in RunPod's cached
    models (core/sources.py). `downloads`: a part found in neither is downloaded at start-up (a
    cached model without a volume: the codec); otherwise HF_HUB_OFFLINE=1."""
    http = {"MODE": "http", "PORT": str(HTTP_PORT), "PORT_HEALTH": str(HTTP_PORT),
            "PRELOAD_MODEL": "1"} if endpoint_type == "lb" else {}  # /ping is 200 once the preload is done
    return {**http,
        "VOICE_PROMPTS_PATH": f"{VOLUME}/voice_prompts",
        "HF_HOME": f"{VOLUME}/hf-cache",
        "HF_HUB_OFFLINE": "0" if downloads else "1",
        "VOICE_CACHE_DIR": f"{VOLUME}/cache/voice_codes",
        "RUNPOD_LOG_LEVEL": "INFO",  # the SDK logs job inputs (transcripts) at DEBUG
        "MAX_CONCURRENCY": "1",
        "STREAMING": "1" if streaming else "0",
        # A host whose driver cannot run CUDA 13.0 fails the worker loudly instead of running on the CPU.
        "DEVICE": "cuda",
    }


def check_pools(pools: list[str]) -> list[str]:
    if not pools:
        raise DeployError("at least one GPU pool is required")
    for pool in pools:
        if not POOL_ID.match(pool):
            raise DeployError(f"{pool!r} is not a serverless GPU pool id: REST v2 takes pool ids such as ADA_24 or "
                              "AMPERE_80 (the `pool` field of GET https://api.runpod.io/v2/catalog/gpus), "
                              "not GPU type names")
    return pools


def build_config(image: str, volume_id: str | None, name: str = "higgs-tts", workers_min: int = 0,
                 workers_max: int = 3, idle_timeout: int = 5, container_disk_gb: int = 10,
                 gpu_pools: list[str] | None = None, flashboot: bool = True, streaming: bool = False,
                 execution_timeout_s: int = 600, endpoint_type: str = "queue",
                 min_cuda_version: str = MIN_CUDA_VERSION, cached_model: bool = False) -> dict:
    """`runpod-config.json`: the body of POST /v2/serverless (`CreateEndpointRequest`), in v2's field names.
    `cached_model`: the model comes from RunPod's cached models (CACHED_MODEL, set in the endpoint's
    Model field); without a volume, the codec is then downloaded at start-up."""
    if not image:
        raise DeployError("an image name is required (e.g. docker.io/you/higgs-tts:0.1.0)")
    if endpoint_type not in ENDPOINT_TYPES:
        raise DeployError(f"endpoint type: one of {', '.join(ENDPOINT_TYPES)}; got {endpoint_type!r}")
    if min_cuda_version not in CUDA_VERSIONS:
        raise DeployError(f"minimum CUDA version: one of {', '.join(CUDA_VERSIONS)}; got {min_cuda_version!r}")
    if workers_min < 0 or workers_max < max(1, workers_min):
        raise DeployError(f"workers: need 0 <= min <= max and max >= 1; got min {workers_min}, max {workers_max}")
    low, high = IDLE_TIMEOUT_RANGE
    if not low <= idle_timeout <= high:
        raise DeployError(f"idle timeout: RunPod takes {low} to {high} seconds; got {idle_timeout}")
    if container_disk_gb < 1 or execution_timeout_s < 1:
        raise DeployError("the container disk (GB) and the execution timeout (s) must be at least 1")
    body = {
        "name": name,
        "type": ENDPOINT_TYPES[endpoint_type],  # required in v2
        "image": image,
        "disk": container_disk_gb,  # container disk in GB
        "env": worker_env(streaming, endpoint_type, downloads=cached_model and not volume_id),  # strings in v2
        "gpu": {
            "pools": check_pools(list(gpu_pools or GPU_POOLS_24GB_UP)),
            "count": 1,
            "minCudaVersion": min_cuda_version,  # this version and every newer one
        },
        "workers": {"min": workers_min, "max": workers_max, "idleTimeout": idle_timeout},
        "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},  # add a worker when a job waits 4 s
        "flashboot": "FLASHBOOT" if flashboot else "OFF",
        "timeout": execution_timeout_s * 1000,  # per-job execution timeout, in milliseconds
    }
    # Not sent, since the docs do not settle them for this case: `dataCenterIds` (omitted: the scheduler
    # chooses) and the mount path of a network volume on serverless workers (v2 takes only the volume ids;
    # RunPod mounts them at /runpod-volume, which worker_env() relies on).
    if volume_id:
        body["networkVolumes"] = [volume_id]
    if endpoint_type == "lb":
        body["ports"] = [f"{HTTP_PORT}/http"]  # the HTTP server, /ping included (PORT = PORT_HEALTH)
    return body


def _post(base_url: str, path: str, api_key: str, body: dict) -> dict:
    where = f"POST {base_url.rstrip('/')}{path}"
    request = urllib.request.Request(
        base_url.rstrip("/") + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                 "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:1000]
        raise DeployError(f"RunPod API {where}: HTTP {exc.code}: {_problem(detail, api_key)}") from None
    except urllib.error.URLError as exc:
        raise DeployError(f"RunPod API {where}: {exc.reason}") from None
    try:
        reply = json.loads(raw)
    except json.JSONDecodeError:
        raise DeployError(f"RunPod API {where}: the reply is not JSON: {raw[:300]!r}") from None
    if not isinstance(reply, dict):
        raise DeployError(f"RunPod API {where}: unexpected reply: {json.dumps(reply)[:300]}")
    return reply


def _problem(text: str, api_key: str) -> str:
    """v2 errors are RFC 9457 problem objects (title, status, detail, errors[]); anything else is shown raw."""
    try:
        problem = json.loads(text)
    except json.JSONDecodeError:
        problem = None
    if isinstance(problem, dict) and ("detail" in problem or "title" in problem):
        parts = [str(problem[k]) for k in ("title", "detail") if problem.get(k)]
        errors = problem.get("errors")
        if isinstance(errors, list) and errors:
            parts.append("; ".join(str(e) for e in errors))
        text = ": ".join(parts)
    return text.replace(api_key, "***") if api_key else text


def endpoint_url(reply: dict) -> str:
    """The endpoint's base URL: from the reply's `requestUrls` (v2), else the documented pattern (a
    load balancer is reached at https://ENDPOINT_ID.api.runpod.ai)."""
    if reply.get("type") == "LOAD_BALANCER":
        return f"https://{reply['id']}.api.runpod.ai"
    urls = reply.get("requestUrls")
    run = urls.get("run") if isinstance(urls, dict) else None
    if isinstance(run, str) and run.endswith("/run"):
        return run[: -len("/run")]
    return f"https://api.runpod.ai/v2/{reply['id']}"


def create(config: dict, api_key: str, base_url: str = REST_URL) -> dict:
    """Create the endpoint of a `runpod-config.json`; returns its id and URL (no template: v2 takes the
    container settings in the endpoint body)."""
    if not api_key:
        raise DeployError("RUNPOD_API_KEY is required to create the endpoint")
    if not isinstance(config, dict):
        raise DeployError("runpod-config.json must hold a JSON object (the body of POST /v2/serverless)")
    if "template" in config or "endpoint" in config:
        raise DeployError("this runpod-config.json was written for RunPod's retired REST API v1 (template + "
                          "endpoint); write it again with `python -m higgs_tts.deploy.runpod config ...` "
                          "(or scripts/deploy-runpod.sh)")
    if "rest.runpod.io" in base_url or base_url.rstrip("/").endswith("/v1"):
        raise DeployError(f"{base_url} is RunPod's retired REST API v1; unset RUNPOD_REST_URL to use {REST_URL}")
    reply = _post(base_url, ENDPOINTS_PATH, api_key, config)
    if not reply.get("id"):
        raise DeployError(f"RunPod API {ENDPOINTS_PATH} returned no id: {json.dumps(reply)[:300]}")
    result = {"endpoint_id": reply["id"], "endpoint_url": endpoint_url(reply)}
    if isinstance(reply.get("requestUrls"), dict):
        result["request_urls"] = reply["requestUrls"]
    return result


def _pools_from_environment() -> str:
    if os.environ.get("GPU_TYPE_IDS") and not os.environ.get("GPU_POOLS"):
        raise DeployError("GPU_TYPE_IDS held REST v1 GPU type names; REST v2 takes serverless GPU pool ids: set "
                          f"GPU_POOLS instead (default {','.join(GPU_POOLS_24GB_UP)}) and unset GPU_TYPE_IDS")
    return os.environ.get("GPU_POOLS", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m higgs_tts.deploy.runpod", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    config = commands.add_parser("config", help="print runpod-config.json (the body of POST /v2/serverless)")
    config.add_argument("--image", required=True)
    config.add_argument("--volume-id", default=os.environ.get("NETWORK_VOLUME_ID") or None)
    config.add_argument("--name", default="higgs-tts")
    config.add_argument("--workers-min", type=int, default=0)
    config.add_argument("--workers-max", type=int, default=3)
    config.add_argument("--idle-timeout", type=int, default=5)
    config.add_argument("--container-disk-gb", type=int, default=10)
    config.add_argument("--execution-timeout", type=int, default=600, help="seconds per job (default 600)")
    config.add_argument("--gpu-pools", default=None,
                        help="comma-separated serverless GPU pool ids (env GPU_POOLS; default: "
                             f"{','.join(GPU_POOLS_24GB_UP)})")
    config.add_argument("--streaming", action="store_true", help="start the worker with STREAMING=1")
    config.add_argument("--endpoint-type", choices=sorted(ENDPOINT_TYPES), default="queue",
                        help="queue: the SDK worker (/run, /runsync); lb: a load balancer over the HTTP server")
    config.add_argument("--min-cuda-version", default=MIN_CUDA_VERSION,
                        help=f"hosts with this CUDA version or newer (default {MIN_CUDA_VERSION}; 12.8 for an "
                             "image built with the cu128 torch wheels)")
    config.add_argument("--no-flashboot", action="store_true")
    config.add_argument("--cached-model", action="store_true",
                        help=f"the model comes from RunPod's cached models (the endpoint's Model field: "
                             f"{CACHED_MODEL}); without --volume-id the codec is downloaded at start-up")
    make = commands.add_parser("create", help="create the endpoint of a config file (POST /v2/serverless)")
    make.add_argument("config_file")
    args = parser.parse_args(argv)
    try:
        if args.command == "config":
            pools_text = args.gpu_pools if args.gpu_pools is not None else _pools_from_environment()
            pools = [p.strip() for p in pools_text.split(",") if p.strip()] or None
            result = build_config(args.image, args.volume_id, args.name, args.workers_min, args.workers_max,
                                  args.idle_timeout, args.container_disk_gb, pools, not args.no_flashboot,
                                  args.streaming, args.execution_timeout, args.endpoint_type,
                                  args.min_cuda_version, args.cached_model)
        else:
            with open(args.config_file) as handle:
                result = create(json.load(handle), os.environ.get("RUNPOD_API_KEY", ""),
                                os.environ.get("RUNPOD_REST_URL") or REST_URL)
    except (DeployError, OSError, json.JSONDecodeError) as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
