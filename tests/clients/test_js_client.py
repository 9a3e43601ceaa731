"""clients/js: the JavaScript client, run by real `node --test` against real workers
(`python handler.py --rp_serve_api`, one without and one with STREAMING=1)."""

import os
import re
import shutil
import subprocess

import pytest
from conftest import REPO, running_server

NODE = shutil.which("node")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(NODE is None, reason="node is not on PATH")]
JS = REPO / "clients" / "js"


@pytest.fixture(scope="module")
def serve(tiny_checkpoint, voice_prompts, tmp_path_factory):
    """`higgs-tts serve` with an API key: the RunPod job routes with GET polling, as RunPod has them."""
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, API_KEY=SERVE_KEY) as url:
        yield url


SERVE_KEY = "js-test-key"


def node_test(env: dict, *paths: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`node --test` with the TAP reporter; returns the run and its summary counts."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HIGGS_TTS_")}
    done = subprocess.run(
        [NODE, "--test", "--test-reporter=tap", *paths],
        cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=900,
    )
    counts = {name: int(n) for name, n in re.findall(r"^# (\w+) (\d+)$", done.stdout, re.M)}
    return done, counts


def test_node_version_is_supported():
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout
    assert int(version.strip().lstrip("v").split(".")[0]) >= 20, version


def test_js_client_against_the_workers(worker, streaming_worker, serve, voice_prompts):
    done, counts = node_test(
        {
            "HIGGS_TTS_URL": worker["url"],
            "HIGGS_TTS_STREAM_URL": streaming_worker["url"],
            "HIGGS_TTS_SERVE_URL": serve,
            "HIGGS_TTS_API_KEY": SERVE_KEY,
            "HIGGS_TTS_VOICE_CLIP": str(voice_prompts / "en_man.wav"),
        },
        "clients/js/test/",
    )
    report = done.stdout[-8000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert counts.get("fail") == 0 and counts.get("skipped") == 0 and counts.get("cancelled") == 0, report
    assert counts.get("pass", 0) >= 16 and counts["pass"] == counts["tests"], report
    assert (worker["voices"] / "js_guest.wav").is_file()  # addVoice reached the worker's folder


def test_js_tests_skip_without_a_worker():
    """`npm test` on a machine with no worker: every suite is skipped, nothing fails."""
    done, counts = node_test({}, "clients/js/test/")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert counts.get("pass") == 0 and counts.get("fail") == 0
    assert "HIGGS_TTS_URL is not set" in done.stdout


def test_package_json_describes_the_module():
    import json

    package = json.loads((JS / "package.json").read_text())
    assert package["name"] == "higgs-tts-client" and package["type"] == "module"
    assert package["engines"]["node"] == ">=20" and not package.get("dependencies")
    assert (JS / package["exports"]["."]).is_file()
    exported = subprocess.run(
        [NODE, "--input-type=module", "-e",
         "const m = await import('higgs-tts-client'); console.log(Object.keys(m).sort().join(' '))"],
        cwd=JS, capture_output=True, text=True, timeout=60,
    )
    # a package imports itself by name through "exports"
    assert exported.returncode == 0, exported.stderr
    for name in ("HiggsTTSClient", "HiggsTTSError", "generateAudio", "saveAudio"):
        assert name in exported.stdout.split()
