"""higgs_tts/client.py: run_async, the async mode of generate_audio and `python -m higgs_tts.client`,
against real workers (`python handler.py --rp_serve_api`, one without and one with STREAMING=1)."""

import json
import os
import shutil
import subprocess
import sys
import wave

import httpx
import pytest
import soundfile as sf
from conftest import REPO, make_bucket, running_server

from higgs_tts import client as client_module
from higgs_tts.client import HiggsTTSClient, HiggsTTSError, generate_audio

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

QUICK = {"max_new_tokens": 40, "seed": 5}
QUICK_FLAGS = ["--max-new-tokens", "40", "--seed", "5"]


SERVE_KEY = "py-test-key"


@pytest.fixture(scope="module")
def serve(tiny_checkpoint, voice_prompts, tmp_path_factory):
    """`higgs-tts serve` with an API key: the RunPod job routes with GET polling, as RunPod has them."""
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, API_KEY=SERVE_KEY) as url:
        yield url


def cli(*args, url=None, cwd=None, env=None):
    """`python -m higgs_tts.client ...` in a subprocess, ENDPOINT_URL from `url`."""
    base = {k: v for k, v in os.environ.items() if k not in ("ENDPOINT_URL", "RUNPOD_ENDPOINT_URL", "RUNPOD_API_KEY")}
    if url:
        base["ENDPOINT_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "higgs_tts.client", *args],
        cwd=cwd or REPO, env={**base, **(env or {})}, capture_output=True, text=True, timeout=600,
    )


def ok(done):
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
    return done


# -- the library --------------------------------------------------------------------------------


def test_run_async_polls_and_matches_run_sync(worker):
    client = HiggsTTSClient(worker["url"])
    job = {"transcript": "Queued, then polled.", "ref_audio": "chadwick", **QUICK}
    queued = client.run_async(job, poll_seconds=0.1)
    assert queued["success"] is True and client._post_polls  # the local server answered GET with 405
    assert queued["audio_base64"] == client.run_sync(job)["audio_base64"]
    assert client.generate_audio("Queued, then polled.", "chadwick", None, None, mode="async",
                                 **QUICK)["audio_base64"] == queued["audio_base64"]
    async_client = HiggsTTSClient(worker["url"], mode="async")
    assert async_client.generate_audio("Queued, then polled.", voice="chadwick",
                                       **QUICK)["audio_base64"] == queued["audio_base64"]


def test_run_and_status_by_hand(worker):
    client = HiggsTTSClient(worker["url"])
    job_id = client.run({"transcript": "By hand.", **QUICK})
    reply = client.status(job_id)
    while reply["status"] in ("IN_QUEUE", "IN_PROGRESS"):
        reply = client.status(job_id)
    assert reply["status"] == "COMPLETED" and reply["output"]["success"] is True


def test_run_async_raises_like_run_sync(worker):
    client = HiggsTTSClient(worker["url"])
    for call in (client.run_sync, client.run_async):
        with pytest.raises(HiggsTTSError, match="unknown voice 'nobody'") as caught:
            call({"transcript": "x", "ref_audio": "nobody"})
        assert caught.value.status == "FAILED"
    with pytest.raises(HiggsTTSError, match="temperature"):
        client.generate_audio("x", temperature=3, mode="async")
    with pytest.raises(ValueError, match="mode"):
        client.generate_audio("x", mode="later")
    with pytest.raises(HiggsTTSError) as caught:
        HiggsTTSClient(worker["url"] + "/no/such/path").health()
    assert caught.value.status == 404


def test_module_generate_audio_in_async_mode(worker, monkeypatch, tmp_path):
    monkeypatch.setenv("ENDPOINT_URL", worker["url"])
    result = generate_audio("From the environment.", "belinda", "Audio is recorded in a large cathedral.", None,
                            mode="async", **QUICK)
    assert result["metadata"]["voice_clone"] == "belinda"
    assert sf.info(HiggsTTSClient.save_audio(result, tmp_path / "env.wav")).samplerate == 24000


def test_run_async_polls_get_status_with_the_api_key(serve):
    client = HiggsTTSClient(serve, api_key=SERVE_KEY)
    job_id = client.run({"transcript": "Queued on the HTTP server.", **QUICK})
    assert client.status(job_id)["status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    result = client.run_async({"transcript": "Queued on the HTTP server.", "ref_audio": "belinda", **QUICK},
                              poll_seconds=0.1)
    assert result["success"] is True and client._post_polls is False  # GET, as on RunPod
    assert result["audio_base64"] == client.run_sync({"transcript": "Queued on the HTTP server.",
                                                      "ref_audio": "belinda", **QUICK})["audio_base64"]
    with pytest.raises(HiggsTTSError, match="ref_audio"):
        client.run_async({"transcript": "x", "ref_audio": "nobody"})
    with pytest.raises(HiggsTTSError) as caught:
        HiggsTTSClient(serve, api_key="wrong").run_async({"transcript": "x"})
    assert caught.value.status == 401


def test_cli_api_key_flag_and_async_against_the_http_server(serve, tmp_path):
    out = tmp_path / "served.wav"
    ok(cli("speak", "Through the key.", "--async", "--api-key", SERVE_KEY, "--out", str(out), *QUICK_FLAGS,
           url=serve, env={"RUNPOD_API_KEY": "wrong"}))  # the flag wins over the environment
    assert sf.info(out).samplerate == 24000
    refused = cli("voices", url=serve, env={"RUNPOD_API_KEY": "wrong"})
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr


def test_async_mode_on_a_streaming_worker(streaming_worker):
    client = HiggsTTSClient(streaming_worker["url"], mode="async")
    result = client.generate_audio("Whole, queued, on a streaming worker.", "belinda", **QUICK)
    assert result["success"] is True and result["sample_rate"] == 24000


# -- the command line ---------------------------------------------------------------------------


def test_cli_speak_writes_a_wav(worker, tmp_path):
    out = tmp_path / "hello.wav"
    done = ok(cli("speak", "Hello from the command line.", "--voice", "belinda",
                  "--scene", "Audio is recorded in a large cathedral.", "--out", str(out), *QUICK_FLAGS,
                  url=worker["url"]))
    info = sf.info(out)
    assert info.samplerate == 24000 and info.channels == 1 and info.frames > 0
    summary = json.loads(done.stdout)
    assert summary["metadata"]["voice_clone"] == "belinda" and "audio_base64" not in summary
    assert summary["duration_seconds"] == pytest.approx(info.frames / 24000, abs=1e-3)
    assert f"wrote {out}" in done.stderr


def test_cli_flags_override_the_environment_and_pick_the_format(worker, tmp_path):
    out = tmp_path / "hello.flac"
    ok(cli("speak", "Flags win.", "--endpoint-url", worker["url"], "--api-key", "unused", "--out", str(out),
           "-o", "temperature=0", "-o", 'scene_prompt=""', *QUICK_FLAGS, url="http://127.0.0.1:9"))
    assert sf.info(out).format == "FLAC"


def test_cli_speak_async_gives_the_same_audio(worker, tmp_path):
    sync_out, async_out = tmp_path / "sync.wav", tmp_path / "async.wav"
    ok(cli("speak", "Same either way.", "--voice", "elsa", "--out", str(sync_out), *QUICK_FLAGS, url=worker["url"]))
    ok(cli("speak", "Same either way.", "--voice", "elsa", "--out", str(async_out), "--async", *QUICK_FLAGS,
           url=worker["url"]))
    assert async_out.read_bytes() == sync_out.read_bytes()


def test_cli_speak_to_s3_downloads_the_upload(worker, tmp_path):
    make_bucket(worker["s3"], "cli-bucket")
    out = tmp_path / "uploaded.mp3"
    done = ok(cli("speak", "To the bucket.", "--s3-bucket", "cli-bucket", "--out", str(out), *QUICK_FLAGS,
                  url=worker["url"]))
    summary = json.loads(done.stdout)
    assert summary["audio_url"].startswith("s3://cli-bucket/") and summary["audio_url"].endswith(".mp3")
    assert sf.info(out).samplerate == 24000
    assert httpx.get(summary["presigned_url"]).content == out.read_bytes()


def test_cli_stream_writes_pcm_items_into_a_wav(streaming_worker, tmp_path):
    out = tmp_path / "streamed.wav"
    done = ok(cli("speak", "Streamed from the command line.", "--voice", "chadwick", "--stream", "--out", str(out),
                  *QUICK_FLAGS, url=streaming_worker["url"]))
    final = json.loads(done.stdout)
    assert final["type"] == "final" and final["audio_items"] >= 1
    with wave.open(str(out)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        frames = wav.getnframes()
    assert frames == pytest.approx(final["duration_seconds"] * 24000, abs=1)
    assert sf.info(out).frames == frames


def test_cli_health_and_voices(worker):
    health = json.loads(ok(cli("health", url=worker["url"])).stdout)
    assert health["status"] == "healthy"
    lines = ok(cli("voices", url=worker["url"])).stdout.splitlines()
    assert any(line.startswith("belinda\tclone\t") for line in lines)
    voices = json.loads(ok(cli("voices", "--json", url=worker["url"])).stdout)
    assert {"belinda", "chadwick"} <= {v["name"] for v in voices}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["speak", "x", "--voice", "nobody", "--out", "x.wav"], "unknown voice 'nobody'"),
        (["speak", "x", "--out", "x.wav", "-o", "colour=blue"], "unknown field 'colour'"),
        (["speak", "x", "--out", "x.wav", "--temperature", "3"], "temperature"),
        (["speak", "x", "--voice", "nobody", "--out", "x.wav", "--async"], "unknown voice 'nobody'"),
        (["speak", "x"], "pass --out FILE"),
        (["speak", "x", "--s3-bucket", "no-such-bucket"], "the upload failed"),
        (["speak", "x", "--stream", "--out", "x.mp3"], "--stream writes a WAV file"),
        # the SDK's local server refuses /stream itself; RunPod fails the job naming STREAMING=1
        (["speak", "x", "--stream", "--out", "x.wav"], "generator"),
    ],
    ids=["voice", "field", "temperature", "async", "no-out", "upload-failed", "stream-suffix",
         "stream-unsupported"],
)
def test_cli_failures_exit_1_with_the_reason(worker, tmp_path, args, message):
    done = cli(*args, *QUICK_FLAGS, url=worker["url"], cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "x.mp3").exists()


def test_cli_without_a_reachable_endpoint(tmp_path):
    missing = cli("health")
    assert missing.returncode == 1 and "ENDPOINT_URL" in missing.stderr and "Traceback" not in missing.stderr
    refused = cli("health", url="http://127.0.0.1:9")
    assert refused.returncode == 1 and "cannot reach http://127.0.0.1:9" in refused.stderr
    usage = cli("speak")
    assert usage.returncode == 2 and "text" in usage.stderr  # argparse: a usage error


def test_client_file_works_copied_alone(worker, tmp_path):
    """The client is one stdlib-only file: copied anywhere, `python client.py ...` runs."""
    copy = tmp_path / "client.py"
    shutil.copy(client_module.__file__, copy)
    env = {"PYTHONPATH": "", "ENDPOINT_URL": worker["url"]}
    done = subprocess.run([sys.executable, "-I", str(copy), "health"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "healthy"


# -- live speech (WS /v1/audio/speech/stream on higgs-tts serve) -----------------------------------

LIVE = {"voice": "belinda", "seed": 5, "max_new_tokens": 40}  # phrases of at most 2 words


def test_live_speech_equals_the_chunked_request(serve):
    audio, done = client_module.speak_live(serve, ["Hello ", "there. ", "Bye", "."], api_key=SERVE_KEY, **LIVE)
    assert done["segments"] == 2 and len(audio) == round(done["duration_seconds"] * 24000) * 2 > 0
    whole = httpx.post(serve + "/v1/audio/speech", headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=300,
                       json={"input": "Hello there. Bye.", "response_format": "pcm", "chunk_method": "sentence",
                             "chunk_max_word_num": 2, **LIVE})
    assert whole.status_code == 200 and audio == whole.content


def test_live_speech_events_and_a_refused_config(serve):
    with client_module.LiveSpeech(serve, SERVE_KEY, **LIVE) as live:
        assert live.ready["type"] == "ready" and live.ready["seed"] == 5
        live.text("Say <|audio_bos|> this")
        assert live.receive()["code"] == "invalid_input"  # the session goes on
        events = list(live.speak(["One two. "]))
    assert [e["text"] for e in events if e["type"] == "segment"] == ["One two."]
    assert all(isinstance(e["pcm"], bytes) for e in events if e["type"] == "audio")
    with pytest.raises(HiggsTTSError, match="voice"):
        client_module.LiveSpeech(serve, SERVE_KEY, voice="nobody_at_all")
    with pytest.raises(HiggsTTSError, match="API key"):
        client_module.LiveSpeech(serve, "wrong", **LIVE)


def test_cli_live_reads_standard_input_as_it_comes(serve, tmp_path):
    out = tmp_path / "live.wav"
    done = subprocess.run(
        [sys.executable, "-m", "higgs_tts.client", "live", "--endpoint-url", serve, "--api-key", SERVE_KEY,
         "--voice", "belinda", "--seed", "5", "--max-new-tokens", "40", "--out", str(out)],
        input="Hello there. Bye.", cwd=REPO, capture_output=True, text=True, timeout=600)
    ok(done)
    summary = json.loads(done.stdout)
    assert summary["type"] == "done" and summary["segments"] == 2
    print("time to first audio from the first sentence (client):", summary["client_first_audio_seconds"], "s")
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 24000 and wav.getnframes() == round(summary["duration_seconds"] * 24000)
    paced = ok(cli("live", "One two three. Four.", "--words-per-second", "20", "--out", str(tmp_path / "p.wav"),
                   "--api-key", SERVE_KEY, url=serve))
    assert json.loads(paced.stdout)["segments"] >= 2
    refused = cli("live", "Hi.", "--out", str(tmp_path / "x.wav"), "--api-key", "wrong", url=serve)
    assert refused.returncode == 1 and "API key" in refused.stderr and not (tmp_path / "x.wav").exists()
