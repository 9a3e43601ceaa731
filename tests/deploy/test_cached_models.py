"""RunPod's cached models: with MODEL_PATH and TOKENIZER_PATH unset and HF_HUB_OFFLINE=1, the real
`higgs-tts serve` and the real worker load the default repos from Hugging Face cache layouts (the
model from RunPod's cached-model directory, the codec from HF_HUB_CACHE: an endpoint caches one
repo) and speak. The Hub's address is a closed loopback port, so any network call would fail."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys

import httpx
import pytest
import soundfile as sf

from higgs_tts.settings import DEFAULT_MODEL, DEFAULT_TOKENIZER
from tests.conftest import REPO, free_port, hf_cache_layout, wait_for_http

pytestmark = pytest.mark.slow  # subprocesses, or over 10 s: not in scripts/test.sh --fast


@pytest.fixture(scope="module")
def cached_env(tiny_checkpoint, voice_prompts, tmp_path_factory):
    model_dir, codec_dir = tiny_checkpoint
    root = tmp_path_factory.mktemp("cached")
    runpod_hub, hf_hub = root / "runpod-volume" / "huggingface-cache" / "hub", root / "hf" / "hub"
    model = hf_cache_layout(runpod_hub, DEFAULT_MODEL, model_dir)
    codec = hf_cache_layout(hf_hub, DEFAULT_TOKENIZER, codec_dir)
    voices = root / "voices"
    shutil.copytree(voice_prompts, voices)
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "TOKENIZER_PATH", "HF_HOME")}
    env.update(HF_HUB_OFFLINE="1", HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HUB_CACHE=str(hf_hub),
               RUNPOD_MODEL_CACHE=str(runpod_hub), MODELS_DIR=str(root / "no-volume"), VOICE_PROMPTS_PATH=str(voices),
               DEVICE="cpu")
    env.pop("RUNPOD_LOG_LEVEL", None)
    return env, {"model": str(model), "tokenizer": str(codec)}


def check_sources(model_info: dict, snapshots: dict) -> None:
    assert model_info["model_path"] == DEFAULT_MODEL
    assert model_info["model_source"] == {"model": {"origin": "runpod-cache", "path": snapshots["model"]},
                                          "tokenizer": {"origin": "hf-cache", "path": snapshots["tokenizer"]}}


def start(command: list[str], env: dict, log_path) -> tuple[subprocess.Popen, object]:
    log = open(log_path, "w+")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log


def test_serve_loads_the_cached_repos_and_speaks(cached_env, tmp_path):
    env, snapshots = cached_env
    port = free_port()
    process, log = start([sys.executable, "-m", "higgs_tts.cli", "serve", "--port", str(port)], env,
                         tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", process)
        reply = httpx.post(url + "/v1/audio/speech", json={"input": "Hello from the cache.", "voice": "belinda",
                                                           "response_format": "wav", "stream": False,
                                                           "max_new_tokens": 40, "seed": 1}, timeout=300)
        assert reply.status_code == 200, reply.text
        samples, rate = sf.read(io.BytesIO(reply.content))
        assert rate == 24000 and len(samples) > 0
        health = httpx.get(url + "/health", timeout=30).json()
        assert health["status"] == "healthy" and health["model_info"]["models_loaded"] is True
        check_sources(health["model_info"], snapshots)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.seek(0)
        output = log.read()
        log.close()
    assert "Traceback" not in output, output[-3000:]


def test_the_worker_loads_the_cached_repos_and_speaks(cached_env, tmp_path):
    env, snapshots = cached_env
    port = free_port()
    process, log = start([sys.executable, "-u", "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
                          "--rp_api_port", str(port)], env, tmp_path / "worker.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/docs", process)
        job = {"input": {"transcript": "Hello from the cache.", "max_new_tokens": 40, "seed": 1,
                         "output_format": "wav"}}
        reply = httpx.post(url + "/runsync", json=job, timeout=300).json()
        output = reply["output"]
        assert output["success"] is True, output
        samples, rate = sf.read(io.BytesIO(base64.b64decode(output["audio_base64"])))
        assert rate == 24000 and len(samples) > 0
        health = httpx.post(url + "/runsync", json={"input": {"action": "health"}}, timeout=60).json()["output"]
        check_sources(health["model_info"], snapshots)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
