"""/ping as RunPod's load balancer reads it: 204 while the model loads, 200 when ready, 503 when it
cannot load; and served on PORT_HEALTH by `higgs-tts serve`."""

import dataclasses
import os
import subprocess
import sys
import time

import httpx
import pytest
from conftest import REPO, free_port, wait_for_http
from fastapi.testclient import TestClient

from higgs_tts.delivery.app import create_app
from higgs_tts.service.speech import SpeechService
from higgs_tts.settings import ServerSettings
from higgs_tts.synthesis.synthesizer import Synthesizer


def test_ping_says_initializing_until_the_model_is_loaded_then_ready(settings, tmp_path):
    service = SpeechService(settings, synthesizer=Synthesizer(settings))  # a fresh, unloaded model
    client = TestClient(create_app(service, ServerSettings(preload_model=False, api_key="k")))
    before = client.get("/ping")  # open without the key, like /health
    assert before.status_code == 204 and before.content == b""
    service.synthesizer.prepare()
    after = client.get("/ping")
    assert after.status_code == 200 and after.json() == {"status": "healthy"}


def test_ping_is_unhealthy_when_the_model_cannot_load(settings, tmp_path):
    missing = dataclasses.replace(settings, model_path=str(tmp_path / "no-model"))
    client = TestClient(create_app(SpeechService(missing), ServerSettings(preload_model=False)))
    reply = client.get("/ping")
    assert reply.status_code == 503 and reply.json()["status"] == "unhealthy"
    assert "does not exist" in reply.json()["error"]


@pytest.mark.slow  # a subprocess
def test_serve_answers_ping_on_port_health_and_becomes_ready(tiny_checkpoint, voice_prompts):
    model_dir, codec_dir = tiny_checkpoint
    port, health = free_port(), free_port()
    env = {**os.environ, "MODEL_PATH": str(model_dir), "TOKENIZER_PATH": str(codec_dir),
           "VOICE_PROMPTS_PATH": str(voice_prompts), "PORT_HEALTH": str(health), "PRELOAD_MODEL": "1"}
    process = subprocess.Popen([sys.executable, "-m", "higgs_tts.cli", "serve", "--port", str(port)], cwd=REPO,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{health}/ping", process)
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and 200 not in seen:
            seen.append(httpx.get(f"http://127.0.0.1:{health}/ping").status_code)
            time.sleep(0.2)
        assert seen[-1] == 200 and set(seen) <= {204, 200}  # initializing, then ready; never unhealthy
        assert httpx.get(f"http://127.0.0.1:{health}/health").status_code == 404  # only /ping there
        assert httpx.get(f"http://127.0.0.1:{port}/ping").status_code == 200  # and on PORT
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "healthy"
    finally:
        process.terminate()
        process.wait(timeout=20)
