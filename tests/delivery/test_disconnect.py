"""Generation stops when its caller is gone: a /runsync client that disconnects, a streamed
/v1/audio/speech listener that leaves, and SIGTERM to `higgs-tts serve` mid-generation. Real
processes and real HTTP clients; each job would run for minutes if nothing stopped it."""

import json
import re
import signal
import socket
import threading
import time

import httpx
import pytest
from conftest import running_server, serve_process

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

# 60 one-word chunks at 4000 frames: 240,000 frames, minutes of work for the tiny model on a CPU.
LONG_JOB = {"transcript": " ".join(["word"] * 60), "chunk_method": "word", "chunk_max_word_num": 1,
            "max_new_tokens": 4000, "seed": 1}


@pytest.fixture
def server(tiny_checkpoint, voice_prompts, tmp_path):
    with serve_process(tiny_checkpoint, voice_prompts, tmp_path, MAX_INLINE_AUDIO_BYTES=str(10**9)) as (url, process):
        yield url, process


def running(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=10).text
    return int(float(re.search(r'^higgs_engine_load\{kind="running"\} (\S+)$', text, re.M).group(1)))


def cancelled(url: str, endpoint: str) -> int:
    """Requests of `endpoint` that ended `cancelled` (a job stopped before its end, not completed)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("higgs_request_errors_total{") and f'endpoint="{endpoint}"' in line \
                and 'code="cancelled"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def post_raw(url: str, path: str, body: dict) -> socket.socket:
    """A POST sent on a raw socket, so the test decides when the client goes away."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def test_a_runsync_client_that_disconnects_stops_its_job(server):
    url, _ = server
    sock = post_raw(url, "/runsync", {"input": LONG_JOB})
    assert wait_until(lambda: running(url) == 1, 60)  # generating (the model may load first)
    sock.close()  # the client is gone: the job stops at its next step, not after its 60 chunks
    assert wait_until(lambda: cancelled(url, "runsync") == 1, 30)
    assert running(url) == 0
    assert httpx.get(url + "/health", timeout=10).status_code == 200


def test_a_streamed_speech_listener_that_leaves_stops_generation(server):
    url, _ = server
    body = {"input": LONG_JOB["transcript"], "voice": "belinda", "response_format": "pcm", "chunk_method": "word",
            "chunk_max_word_num": 1, "max_new_tokens": 4000, "seed": 1}
    sock = post_raw(url, "/v1/audio/speech", body)
    assert sock.recv(12) == b"HTTP/1.1 200"  # the headers come with the first audio
    assert wait_until(lambda: running(url) == 1, 60)  # a later chunk generating
    sock.close()
    assert wait_until(lambda: cancelled(url, "speech") == 1, 30)
    assert running(url) == 0


def test_sigterm_mid_generation_exits_within_seconds(server):
    url, process = server
    replies = []
    client = threading.Thread(target=lambda: replies.append(
        httpx.post(url + "/runsync", json={"input": LONG_JOB}, timeout=120)), daemon=True)
    client.start()
    assert wait_until(lambda: running(url) == 1, 60)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)  # the graceful shutdown does not wait for the 60 chunks
    client.join(timeout=10)
    if replies:  # the request in flight was answered before the server went: cancelled, not a crash
        assert replies[0].json()["output"]["error_code"] == "cancelled"


def test_a_failure_inside_a_watched_call_keeps_its_error(server):
    # The watched call runs beside a disconnect watcher; its own error must come out as itself
    # (once it came out as anyio's ExceptionGroup: a 500 internal_error).
    url, _ = server
    response = httpx.post(url + "/v1/audio/speech", json={"input": "Hi.", "voice": "nobody", "speed": 2.0},
                          timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_voice"
    job = httpx.post(url + "/runsync", json={"input": {"transcript": "Hi.", "temperature": "hot"}}, timeout=60).json()
    assert job["status"] == "FAILED" and job["output"]["error_code"] == "invalid_input"


def audit_lines(log_file) -> list[dict]:
    lines = log_file.read_text().splitlines()
    return [json.loads(line[line.index("{"):]) for line in lines if '"event": "job"' in line]


def test_a_stream_whose_client_stops_reading_and_leaves_is_audited_cancelled(tiny_checkpoint, voice_prompts,
                                                                           tmp_path_factory, tmp_path):
    # The client reads the headers, then nothing, then closes. Wherever the body generator is then (in
    # a step, or waiting at a yield for a send that cannot finish: it was never closed, and its job
    # had no audit line or one still `running`), the job's line says `cancelled`.
    log_file = tmp_path / "serve.log"
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, log_to=log_file) as url:
        for stream_format in ("audio", "sse"):
            body = {"input": " ".join(["word"] * 200), "voice": "belinda", "response_format": "pcm",
                    "stream_format": stream_format, "chunk_method": "word", "chunk_max_word_num": 1,
                    "max_new_tokens": 200, "seed": 1}
            host, port = url.removeprefix("http://").split(":")
            payload = json.dumps(body).encode()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
            sock.connect((host, int(port)))
            sock.sendall(f"POST /v1/audio/speech HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            assert sock.recv(12) == b"HTTP/1.1 200"
            time.sleep(2)  # not reading: the audio backs up
            sock.close()
            assert wait_until(lambda n=stream_format: len(audit_lines(log_file)) == ("audio", "sse").index(n) + 1,
                              30)
            assert wait_until(lambda: running(url) == 0, 30)
    lines = audit_lines(log_file)
    assert [(a["status"], a["error_code"]) for a in lines] == [("cancelled", "cancelled")] * 2
