"""SIGTERM ends every process we start within 10 s, its jobs in flight failing `cancelled`: the RunPod
worker's local API (`handler.py --rp_serve_api`) mid-job, and any of our servers where a thread is
stuck where no stop reaches. (`higgs-tts serve` mid-generation: test_disconnect.py.)"""

import json
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from conftest import REPO, free_port, running_worker, wait_for_http, wait_until

from higgs_tts.delivery.shutdown import EXIT_SECONDS

pytestmark = pytest.mark.slow  # subprocesses: not in scripts/test.sh --fast

# 60 one-word chunks at 4000 frames: minutes of work for the tiny model on a CPU.
LONG_JOB = {"transcript": " ".join(["word"] * 60), "chunk_method": "word", "chunk_max_word_num": 1,
            "max_new_tokens": 4000, "seed": 1}


def audit_lines(log) -> list[dict]:
    log.flush()
    log.seek(0)
    return [json.loads(line[line.index("{"):]) for line in log.read().splitlines() if '"event": "job"' in line]


def test_the_worker_api_stops_mid_job_on_sigterm(tiny_checkpoint, voice_prompts, s3_server, tmp_path_factory):
    with running_worker(tiny_checkpoint, voice_prompts, s3_server, tmp_path_factory) as worker:
        log, process = worker["log"], worker["process"]
        replies = []
        client = threading.Thread(target=lambda: replies.append(
            httpx.post(worker["url"] + "/runsync", json={"input": LONG_JOB}, timeout=300)), daemon=True)
        client.start()
        wait_until(lambda: "synthesizing" in (log.flush(), log.seek(0), log.read())[2], 120)  # generating
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)  # not after the 60 chunks: the generation is stopped at once
        client.join(timeout=10)
        assert replies and replies[0].json()["status"] == "FAILED"
        assert "cancelled" in replies[0].json()["error"]
        assert [(a["status"], a["error_code"]) for a in audit_lines(log)] == [("cancelled", "cancelled")]


# A server whose only route blocks its event loop for an hour: no stop, and no graceful shutdown, runs.
STUCK_SERVER = """
import sys, time
from fastapi import FastAPI
from higgs_tts.delivery import shutdown

app = FastAPI()

@app.get("/stuck")
async def stuck():
    print("stuck", flush=True)
    time.sleep(3600)

shutdown.StoppingServer(shutdown.config(app, "127.0.0.1", int(sys.argv[1]), "info"), lambda: None).run()
"""


def get_quietly(url: str) -> None:
    try:
        httpx.get(url, timeout=None)
    except httpx.HTTPError:  # the server went away: that is the point
        pass


def test_a_process_stuck_past_the_graceful_shutdown_exits_anyway():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", STUCK_SERVER, str(port)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/docs", process, timeout=60)
        threading.Thread(target=get_quietly, args=(f"http://127.0.0.1:{port}/stuck",), daemon=True).start()
        while process.stdout.readline().strip() != "stuck":  # the request is in its worker thread
            assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=EXIT_SECONDS + 5)
        assert process.returncode == 1
        assert "shutdown did not finish" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
