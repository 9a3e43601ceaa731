"""Many requests at once through `higgs-tts serve` with the fast engine's continuous batching (CPU,
tiny checkpoint): all complete and equal their solo runs; cancelled jobs free their slots; past the
admission limit requests get the busy error."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import engine_load, running_server, wait_until

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

FAST = {"ENGINE": "fast", "DEVICE": "cpu"}


@pytest.fixture(scope="module")
def server(tiny_checkpoint, voice_prompts, tmp_path_factory):
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, **FAST, ENGINE_SLOTS="8",
                        ENGINE_QUEUE="16", ENGINE_MAX_LEN="2048", MAX_CONCURRENCY="4") as url:
        yield url


TEXTS = ["Hello there.", "A somewhat longer sentence to speak.", "Short.", "Numbers one two three.",
         "The weather is fine today.", "Please hold the line."]


def job(index: int) -> dict:
    return {"transcript": TEXTS[index % len(TEXTS)], "seed": 1000 + index, "max_new_tokens": 60,
            "ref_audio": ["belinda", "chadwick", None][index % 3] or "en_woman"}


def runsync(url: str, job_input: dict) -> dict:
    return httpx.post(url + "/runsync", json={"input": job_input}, timeout=600).json()


def test_sixteen_concurrent_requests_equal_their_solo_runs(server):
    solo = [runsync(server, job(i)) for i in range(16)]
    assert all(r["status"] == "COMPLETED" for r in solo), solo
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(lambda i: runsync(server, job(i)), range(16)))
    for index, (alone, crowd) in enumerate(zip(solo, together, strict=True)):
        assert crowd["status"] == "COMPLETED", crowd
        assert crowd["output"]["audio_base64"] == alone["output"]["audio_base64"], index
    assert engine_load(server) == {"running": 0.0, "waiting": 0.0, "admitted": 0.0}


def test_health_says_the_engine_size_and_why(server):
    assert httpx.get(server + "/health").json()["model_info"]["engine"] == {
        "slots": 8, "queue": 16, "max_len": 2048, "sized_by": "ENGINE_SLOTS; ENGINE_QUEUE"}


LONG = {"transcript": " ".join(f"word{i}" for i in range(40)) + ".", "chunk_method": "word",
        "chunk_max_word_num": 1, "max_new_tokens": 30, "seed": 3}  # 40 chunks, one after another


def test_cancelling_a_job_frees_its_slot(server):
    job_id = httpx.post(server + "/run", json={"input": LONG}).json()["id"]
    wait_until(lambda: engine_load(server).get("running", 0) >= 1)
    assert httpx.post(f"{server}/cancel/{job_id}").json()["status"] == "CANCELLED"
    wait_until(lambda: engine_load(server) == {"running": 0.0, "waiting": 0.0, "admitted": 0.0}, 30)
    assert httpx.get(f"{server}/status/{job_id}").json()["status"] == "CANCELLED"
    assert httpx.post(f"{server}/cancel/job-none").status_code == 404


def test_requests_past_the_admission_limit_are_told_busy(tiny_checkpoint, voice_prompts, tmp_path_factory):
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, **FAST, ENGINE_SLOTS="1", ENGINE_QUEUE="1",
                        MAX_CONCURRENCY="4") as url:
        with ThreadPoolExecutor(max_workers=2) as pool:
            running = [pool.submit(runsync, url, LONG) for _ in range(2)]
            wait_until(lambda: engine_load(url).get("admitted", 0) == 2)
            busy = runsync(url, {"transcript": "One more.", "seed": 1})
            assert busy["status"] == "FAILED" and busy["output"]["error_code"] == "busy"
            assert "busy" in busy["error"]
            speech = httpx.post(url + "/v1/audio/speech", json={"input": "And another.", "seed": 2}, timeout=60)
            assert speech.status_code == 503 and speech.json()["error"]["code"] == "busy"
            assert all(f.result()["status"] == "COMPLETED" for f in running)  # the admitted ones finish
        assert runsync(url, {"transcript": "Room again.", "seed": 3, "max_new_tokens": 30})["status"] == "COMPLETED"
