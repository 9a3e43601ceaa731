"""The RunPod worker through the real SDK: `python handler.py --rp_serve_api` and HTTP requests."""

import base64
import collections
import contextlib
import http.server
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import soundfile as sf
from conftest import REPO, make_bucket

from higgs_tts.client import HiggsTTSClient, HiggsTTSError

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools


def runsync(worker, job_input, timeout=300):
    reply = httpx.post(worker["url"] + "/runsync", json={"input": job_input}, timeout=timeout)
    assert reply.status_code == 200, reply.text
    return reply.json()


def completed(worker, job_input):
    reply = runsync(worker, job_input)
    assert reply["status"] == "COMPLETED", reply
    assert reply["output"]["success"] is True
    return reply["output"]


def wav_of(output):
    return sf.read(io.BytesIO(base64.b64decode(output["audio_base64"])), dtype="float32")


QUICK = {"max_new_tokens": 40, "seed": 5}


def test_basic_speech(worker):
    output = completed(worker, {"transcript": "Hello, this is a basic request.", **QUICK})
    audio, rate = wav_of(output)
    assert rate == 24000 and len(audio) % 960 == 0 and len(audio) > 0
    assert output["metadata"]["voice_clone"] is None


def test_voice_clone_with_scene_prompt(worker):
    output = completed(worker, {"transcript": "Cloned with a scene.", "ref_audio": "belinda",
                                "scene_prompt": "Audio is recorded in a large cathedral.", **QUICK})
    assert output["metadata"]["voice_clone"] == "belinda"
    assert wav_of(output)[1] == 24000


def test_s3_upload(worker):
    make_bucket(worker["s3"], "worker-bucket")
    output = completed(worker, {"transcript": "To the bucket.", "s3_bucket": "worker-bucket",
                                "s3_key": "out/speech.mp3", "output_format": "mp3", **QUICK})
    assert output["audio_url"] == "s3://worker-bucket/out/speech.mp3"
    download = httpx.get(output["presigned_url"])
    assert download.status_code == 200 and download.headers["content-type"] == "audio/mpeg"
    assert sf.read(io.BytesIO(download.content))[1] == 24000


def test_long_text_with_word_chunking(worker):
    text = " ".join(f"Word{i}" for i in range(30)) + "."
    output = completed(worker, {"transcript": text, "chunk_method": "word", "chunk_max_word_num": 10,
                                "ref_audio": "en_woman", **QUICK})
    assert output["generation_metrics"]["chunks_processed"] == 3
    assert output["metadata"]["generation_parameters"]["chunks_processed"] == 3


def test_same_seed_same_audio_through_the_api(worker):
    job = {"transcript": "Determinism.", "ref_audio": "chadwick", **QUICK}
    assert completed(worker, job)["audio_base64"] == completed(worker, job)["audio_base64"]


def test_health_and_list_voices(worker):
    health = completed(worker, {"action": "health"})
    assert health["status"] == "healthy"
    clips = {path.stem for path in worker["voices"].glob("*.wav")}
    assert health["model_info"]["voice_prompts_available"] == len(clips) > 0
    names = {v["name"] for v in completed(worker, {"action": "list_voices"})["voices"]}
    assert {"belinda", "chadwick", "daffy", "elsa", "jorts"} <= names


def test_clone_from_base64_and_add_voice(worker, voice_prompts):
    clip = base64.b64encode((voice_prompts / "en_man.wav").read_bytes()).decode()
    output = completed(worker, {"transcript": "Sent along.", "ref_audio_base64": clip,
                                "ref_audio_transcript": "Maintaining your ability to learn.", **QUICK})
    assert output["metadata"]["voice_clone"] == "uploaded"
    added = completed(worker, {"action": "add_voice", "voice_name": "guest_voice", "ref_audio_base64": clip,
                               "ref_audio_transcript": "Maintaining your ability to learn."})
    assert added["voice"]["kind"] == "clone"
    assert (worker["voices"] / "guest_voice.wav").is_file()
    used = completed(worker, {"transcript": "By name now.", "ref_audio": "guest_voice", **QUICK})
    assert used["metadata"]["voice_clone"] == "guest_voice"



def test_voice_actions_add_get_delete(worker, voice_prompts):
    from conftest import encode_recording

    clip = base64.b64encode(encode_recording(voice_prompts / "en_woman.wav", "opus", seconds=2.0)).decode()
    added = completed(worker, {"action": "add_voice", "voice_name": "opus_voice", "ref_audio_base64": clip,
                               "ref_audio_transcript": "An opus take.", "description": "From a browser"})
    assert added["voice"] == {"name": "opus_voice", "kind": "clone", "description": "From a browser"}
    got = completed(worker, {"action": "get_voice", "voice_name": "opus_voice"})["voice"]
    assert got["transcript"] == "An opus take." and abs(got["duration_seconds"] - 2.0) < 0.1
    assert completed(worker, {"transcript": "By name.", "ref_audio": "opus_voice", **QUICK})["success"]
    assert completed(worker, {"action": "delete_voice", "voice_name": "opus_voice"})["deleted"] == "opus_voice"
    assert not list(worker["voices"].glob("opus_voice*"))
    after = runsync(worker, {"transcript": "By name.", "ref_audio": "opus_voice", **QUICK})
    assert after["status"] == "FAILED" and "unknown voice 'opus_voice'" in after["error"]
    again = runsync(worker, {"action": "delete_voice", "voice_name": "opus_voice"})
    assert again["status"] == "FAILED" and "no stored voice named 'opus_voice'" in again["error"]

    client = HiggsTTSClient(worker["url"])
    client.add_voice("client_voice", voice_prompts / "en_man.wav", "Maintaining your ability to learn.")
    assert client.get_voice("client_voice")["kind"] == "clone"
    assert client.delete_voice("client_voice")["deleted"] == "client_voice"
    with pytest.raises(HiggsTTSError, match="no stored voice"):
        client.delete_voice("client_voice")

BAD = [
    ({"transcript": ""}, "transcript: must not be empty"),
    ({"transcript": "x", "temperature": 3}, "temperature"),
    ({"transcript": "x", "top_p": 0}, "top_p"),
    ({"transcript": "x", "max_new_tokens": 100000}, "max_new_tokens"),
    ({"transcript": "x", "ref_audio": "nobody"}, "unknown voice 'nobody'"),
    ({"transcript": "x", "ref_audio": "../secret"}, "ref_audio"),
    ({"transcript": "x", "s3_key": "../../etc/passwd"}, "s3_key"),
    ({"transcript": "x", "colour": "blue"}, "unknown field 'colour'"),
    ({"transcript": "x", "output_format": "vorbis"}, "output_format"),
    ({"transcript": "x", "ref_audio_base64": "%%%"}, "ref_audio_base64 is not valid base64"),
    ({"action": "explode"}, "action must be one of"),
    ({"action": "add_voice", "voice_name": "a/b", "ref_audio_base64": "AA==", "ref_audio_transcript": "x"},
     "voice_name"),
]


@pytest.mark.parametrize(("job_input", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_inputs_fail_with_a_clear_error(worker, job_input, message):
    reply = runsync(worker, job_input)
    assert reply["status"] == "FAILED"
    assert message in reply["error"]
    assert "Traceback" not in reply["error"]


def test_python_client_against_the_local_server(worker, tmp_path):
    client = HiggsTTSClient(worker["url"])
    result = client.generate_audio("Hello from the client.", voice="belinda", scene_prompt=None,
                                   s3_bucket=None, **QUICK)
    path = client.save_audio(result, tmp_path / "client.wav")
    assert sf.info(path).samplerate == 24000
    assert client.health()["status"] == "healthy"
    assert any(v["name"] == "elsa" for v in client.list_voices())
    with pytest.raises(HiggsTTSError, match="unknown voice"):
        client.generate_audio("x", voice="nobody")


def test_worker_log_has_no_transcripts(worker):
    secret = "the password is swordfish"
    completed(worker, {"transcript": secret, **QUICK})
    worker["log"].flush()
    worker["log"].seek(0)
    text = worker["log"].read()
    assert '"event": "job"' in text
    assert secret not in text and worker["s3"]["AWS_SECRET_ACCESS_KEY"] not in text


# -- a streaming worker (STREAMING=1) ------------------------------------------------------------


def test_stream_endpoint_gives_audio_items_and_a_final_response(streaming_worker):
    job = {"transcript": "Streamed through RunPod.", "ref_audio": "chadwick", **QUICK}
    job_id = httpx.post(streaming_worker["url"] + "/run", json={"input": {**job, "stream": True}}).json()["id"]
    reply = httpx.post(f"{streaming_worker['url']}/stream/{job_id}", timeout=300).json()
    assert reply["status"] == "COMPLETED", reply
    items = [entry["output"] for entry in reply["stream"]]
    audio, final = items[:-1], items[-1]
    assert audio and all(i["type"] == "audio" and i["sample_rate"] == 24000 for i in audio)
    assert [i["seq"] for i in items] == list(range(len(items)))
    assert all(len(json.dumps(i)) < 1_000_000 for i in items)
    assert final["type"] == "final" and final["success"] is True
    pcm = b"".join(base64.b64decode(i["audio_base64"]) for i in audio)
    assert final["duration_seconds"] == pytest.approx(len(pcm) / 2 / 24000, abs=1e-3)
    assert final["generation_metrics"]["time_to_first_audio"] > 0


def test_stream_endpoint_ends_a_failed_job_with_an_error_item_and_its_code(streaming_worker):
    job = {"transcript": "Who?", "ref_audio": "nobody", "stream": True, **QUICK}
    job_id = httpx.post(streaming_worker["url"] + "/run", json={"input": job}).json()["id"]
    reply = httpx.post(f"{streaming_worker['url']}/stream/{job_id}", timeout=300).json()
    last = reply["stream"][-1]["output"]
    assert last["type"] == "error" and last["success"] is False and last["error_code"] == "unknown_voice"
    assert "unknown voice 'nobody'" in last["error"]


def test_streaming_worker_answers_whole_jobs_as_a_one_item_list(streaming_worker, tmp_path):
    reply = runsync(streaming_worker, {"transcript": "Not streamed.", **QUICK})
    assert reply["status"] == "COMPLETED" and isinstance(reply["output"], list) and len(reply["output"]) == 1
    assert wav_of(reply["output"][0])[1] == 24000
    client = HiggsTTSClient(streaming_worker["url"])  # reads both shapes
    result = client.generate_audio("Through the client.", voice="belinda", **QUICK)
    assert sf.info(client.save_audio(result, tmp_path / "s.wav")).samplerate == 24000
    assert client.health()["status"] == "healthy"


def test_python_client_streams(streaming_worker):
    client = HiggsTTSClient(streaming_worker["url"])
    items = list(client.stream({"transcript": "Client stream.", **QUICK}))
    assert items[-1]["type"] == "final" and items[-1]["audio_items"] == len(items) - 1
    with pytest.raises(HiggsTTSError, match="speed"):
        list(client.stream({"transcript": "x", "speed": 2.0}))


def test_whole_response_worker_refuses_stream(worker):
    reply = runsync(worker, {"transcript": "x", "stream": True})
    assert reply["status"] == "FAILED" and "STREAMING=1" in reply["error"]


# -- on RunPod: the worker loop against a stand-in for RunPod's job API --------------------------
# The SDK's worker mode (RUNPOD_WEBHOOK_GET_JOB set) takes jobs from RunPod's job-take URL and posts
# progress and results to job-done, stream items to job-stream. That API exists only on RunPod, so
# a loopback stand-in plays it: it hands out queued jobs and records every post.


class JobApi(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), JobApiHandler)
        self.jobs: queue.Queue = queue.Queue()
        self.posts: dict[str, list] = collections.defaultdict(list)  # job id -> (route, body) in order
        self.lock = threading.Lock()

    def wait_done(self, job_id, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                done = [b for route, b in self.posts[job_id]
                        if route == "job-done" and b.get("status") != "IN_PROGRESS"]
            if done:
                time.sleep(0.5)  # progress posts run on their own threads
                return done[0]
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} never finished: {self.posts[job_id]}")

    def bodies(self, job_id, route):
        with self.lock:
            return [b for r, b in self.posts[job_id] if r == route]


class JobApiHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        route = self.path.split("/")[1]
        if route == "job-take":
            try:
                job = self.server.jobs.get(timeout=0.5)
            except queue.Empty:
                return self._reply(204)
            return self._reply(200, json.dumps(job).encode())
        time.sleep(0.5)  # job-stop: a long poll that finds nothing to stop
        self._reply(204)

    def do_POST(self):
        route, job_id = self.path.split("?")[0].split("/")[1:3]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.posts[job_id].append((route, body))
        self._reply(200, b"{}")

    def _reply(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def worker_on_runpod(tiny_checkpoint, voices, tmp_path_factory, **extra_env):
    """`python -u handler.py` in worker mode against a fresh stand-in job API; yields (api, process)."""
    api = JobApi()
    threading.Thread(target=api.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{api.server_address[1]}"
    model_dir, codec_dir = tiny_checkpoint
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env.update(MODEL_PATH=str(model_dir), TOKENIZER_PATH=str(codec_dir), VOICE_PROMPTS_PATH=str(voices),
               RUNPOD_WEBHOOK_GET_JOB=f"{base}/job-take/$ID?gpu=test",
               RUNPOD_WEBHOOK_POST_OUTPUT=f"{base}/job-done/$ID?gpu=test",
               RUNPOD_WEBHOOK_POST_STREAM=f"{base}/job-stream/$ID?gpu=test",
               RUNPOD_SKIP_GPU_CHECK="true", RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true", **extra_env)
    log = open(tmp_path_factory.mktemp("logs") / "on-runpod.log", "w+")
    process = subprocess.Popen([sys.executable, "-u", "handler.py"], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        yield api, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=20)
        api.shutdown()
        log.close()


@pytest.fixture(scope="module")
def on_runpod(tiny_checkpoint, voice_prompts, tmp_path_factory):
    """The streaming worker (STREAMING=1) on RunPod, with its own copy of the voices."""
    voices = tmp_path_factory.mktemp("on-runpod") / "voices"
    shutil.copytree(voice_prompts, voices)
    with worker_on_runpod(tiny_checkpoint, voices, tmp_path_factory, STREAMING="1") as (api, _):
        yield api


def test_on_runpod_a_long_job_reports_progress_per_chunk(on_runpod):
    text = " ".join(f"Word{i}" for i in range(30)) + "."
    on_runpod.jobs.put({"id": "long-job", "input": {"transcript": text, "chunk_method": "word",
                                                    "chunk_max_word_num": 10, **QUICK}})
    done = on_runpod.wait_done("long-job")
    response = done["output"][-1]
    assert response["success"] is True and response["generation_metrics"]["chunks_processed"] == 3
    progress = [b["output"] for b in on_runpod.bodies("long-job", "job-done") if b.get("status") == "IN_PROGRESS"]
    assert sorted((p["chunks_done"], p["chunks_total"]) for p in progress) == [(1, 3), (2, 3), (3, 3)]
    assert max(p["audio_seconds"] for p in progress) == pytest.approx(response["duration_seconds"], abs=1e-3)
    streamed = on_runpod.bodies("long-job", "job-stream")
    assert all(len(json.dumps(b)) < 1_000_000 for b in streamed)


def test_on_runpod_an_error_item_reaches_stream_with_its_code(on_runpod):
    on_runpod.jobs.put({"id": "bad-voice", "input": {"transcript": "Who?", "stream": True, "ref_audio": "nobody",
                                                     **QUICK}})
    done = on_runpod.wait_done("bad-voice")
    assert "unknown voice 'nobody'" in done["error"]  # the job is FAILED with the error at its top level
    items = [b["output"] for b in on_runpod.bodies("bad-voice", "job-stream")]
    assert items and items[-1]["type"] == "error" and items[-1]["error_code"] == "unknown_voice"
    assert items[-1]["error_field"] == "ref_audio"


def test_on_runpod_sigterm_ends_a_long_job_within_seconds(tiny_checkpoint, voice_prompts, tmp_path_factory):
    """RunPod stops a worker with SIGTERM: the running job's generation ends at its next step and the
    process exits, instead of finishing every remaining chunk first."""
    with worker_on_runpod(tiny_checkpoint, voice_prompts, tmp_path_factory) as (api, process):
        text = " ".join(f"Word{i}." for i in range(150))  # 150 chunks of up to 1,024 frames each
        api.jobs.put({"id": "long", "input": {"transcript": text, "chunk_method": "word", "chunk_max_word_num": 1,
                                              "max_new_tokens": 1024, "seed": 1}})
        deadline = time.monotonic() + 300
        while not any(b.get("status") == "IN_PROGRESS" for b in api.bodies("long", "job-done")):
            assert time.monotonic() < deadline and process.poll() is None, "the job never started"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        process.wait(timeout=60)
        print(f"worker exited {time.monotonic() - stopped:.1f} s after SIGTERM")
        done = api.wait_done("long", timeout=5)
        assert done.get("status") != "COMPLETED" and "cancel" in json.dumps(done).lower()
        assert len([b for b in api.bodies("long", "job-done") if b.get("status") == "IN_PROGRESS"]) < 150
