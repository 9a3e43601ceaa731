"""RunPod template and endpoint: the configuration file, and creating both through RunPod's REST API.

    python -m higgs_tts.deploy.runpod config --image IMAGE --volume-id ID > runpod-config.json
    python -m higgs_tts.deploy.runpod create runpod-config.json          (needs RUNPOD_API_KEY)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

REST_URL = "https://rest.runpod.io/v1"
VOLUME = "/runpod-volume"

# RunPod GPU types with 24 GB and more (the model needs about 12 GB in bf16 plus its caches).
GPU_TYPES_24GB_UP = [
    "NVIDIA GeForce RTX 4090",
    "NVIDIA RTX A5000",
    "NVIDIA L4",
    "NVIDIA RTX A6000",
    "NVIDIA L40S",
    "NVIDIA RTX 6000 Ada Generation",
    "NVIDIA A100 80GB PCIe",
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA H100 80GB HBM3",
    "NVIDIA H100 PCIe",
    "NVIDIA H200",
]


# torch 2.11's PyPI build is for CUDA 13.0: hosts need a driver that supports it.
CUDA_VERSIONS = ["13.0"]


class DeployError(RuntimeError):
    pass


def worker_env(streaming: bool = False) -> dict[str, str]:
    """The worker's environment on RunPod: everything lives on the network volume."""
    return {
        "MODEL_PATH": f"{VOLUME}/models/higgs-audio-v2-generation-3B-base",
        "TOKENIZER_PATH": f"{VOLUME}/models/higgs-audio-v2-tokenizer",
        "VOICE_PROMPTS_PATH": f"{VOLUME}/voice_prompts",
        "HF_HOME": f"{VOLUME}/hf-cache",
        "HF_HUB_OFFLINE": "1",  # the volume holds the weights; a worker never downloads at start-up
        "VOICE_CACHE_DIR": f"{VOLUME}/cache/voice_codes",
        "RUNPOD_LOG_LEVEL": "INFO",  # the SDK logs job inputs (transcripts) at DEBUG
        "MAX_CONCURRENCY": "1",
        "STREAMING": "1" if streaming else "0",
    }


def build_config(image: str, volume_id: str | None, name: str = "higgs-tts", workers_min: int = 0,
                 workers_max: int = 3, idle_timeout: int = 5, container_disk_gb: int = 10,
                 gpu_types: list[str] | None = None, flashboot: bool = True, streaming: bool = False,
                 execution_timeout_s: int = 600) -> dict:
    """`runpod-config.json`: a serverless template and an endpoint, in the REST API's field names."""
    if not image:
        raise DeployError("an image name is required (e.g. docker.io/you/higgs-tts:0.1.0)")
    if workers_min < 0 or workers_max < max(1, workers_min):
        raise DeployError(f"workers: need 0 <= min <= max and max >= 1; got min {workers_min}, max {workers_max}")
    endpoint = {
        "name": name,
        "computeType": "GPU",
        "gpuTypeIds": gpu_types or GPU_TYPES_24GB_UP,
        "gpuCount": 1,
        "allowedCudaVersions": CUDA_VERSIONS,
        "workersMin": workers_min,
        "workersMax": workers_max,
        "idleTimeout": idle_timeout,
        "flashboot": flashboot,
        "scalerType": "QUEUE_DELAY",
        "scalerValue": 4,
        "executionTimeoutMs": execution_timeout_s * 1000,
    }
    if volume_id:
        endpoint["networkVolumeId"] = volume_id
    return {
        "template": {
            "name": f"{name}-template",
            "imageName": image,
            "isServerless": True,
            "containerDiskInGb": container_disk_gb,
            "env": worker_env(streaming),
        },
        "endpoint": endpoint,
    }


def _post(base_url: str, path: str, api_key: str, body: dict) -> dict:
    request = urllib.request.Request(
        base_url.rstrip("/") + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        raise DeployError(f"RunPod API {path}: HTTP {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise DeployError(f"RunPod API {path}: {exc.reason}") from None


def create(config: dict, api_key: str, base_url: str = REST_URL) -> dict:
    """Create the template, then the endpoint that uses it; returns their ids and the endpoint URL."""
    if not api_key:
        raise DeployError("RUNPOD_API_KEY is required to create the template and endpoint")
    template = _post(base_url, "/templates", api_key, config["template"])
    if "id" not in template:
        raise DeployError(f"RunPod API /templates returned no id: {json.dumps(template)[:300]}")
    endpoint = _post(base_url, "/endpoints", api_key, {**config["endpoint"], "templateId": template["id"]})
    if "id" not in endpoint:
        raise DeployError(f"RunPod API /endpoints returned no id: {json.dumps(endpoint)[:300]}")
    return {"template_id": template["id"], "endpoint_id": endpoint["id"],
            "endpoint_url": f"https://api.runpod.ai/v2/{endpoint['id']}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m higgs_tts.deploy.runpod", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    config = commands.add_parser("config", help="print runpod-config.json")
    config.add_argument("--image", required=True)
    config.add_argument("--volume-id", default=os.environ.get("NETWORK_VOLUME_ID") or None)
    config.add_argument("--name", default="higgs-tts")
    config.add_argument("--workers-min", type=int, default=0)
    config.add_argument("--workers-max", type=int, default=3)
    config.add_argument("--idle-timeout", type=int, default=5)
    config.add_argument("--container-disk-gb", type=int, default=10)
    config.add_argument("--gpu-types", default=os.environ.get("GPU_TYPE_IDS", ""),
                        help="comma-separated RunPod GPU type ids (default: every type with 24 GB or more)")
    config.add_argument("--streaming", action="store_true", help="start the worker with STREAMING=1")
    config.add_argument("--no-flashboot", action="store_true")
    make = commands.add_parser("create", help="create the template and endpoint of a config file")
    make.add_argument("config_file")
    args = parser.parse_args(argv)
    try:
        if args.command == "config":
            gpu_types = [g.strip() for g in args.gpu_types.split(",") if g.strip()] or None
            result = build_config(args.image, args.volume_id, args.name, args.workers_min, args.workers_max,
                                  args.idle_timeout, args.container_disk_gb, gpu_types, not args.no_flashboot,
                                  args.streaming)
        else:
            with open(args.config_file) as handle:
                result = create(json.load(handle), os.environ.get("RUNPOD_API_KEY", ""),
                                os.environ.get("RUNPOD_REST_URL", REST_URL))
    except (DeployError, OSError, json.JSONDecodeError) as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
