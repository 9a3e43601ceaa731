"""Voices over HTTP on a running `higgs-tts serve`: multipart upload, use by name, read, delete."""

import concurrent.futures
import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import encode_recording, running_server

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

KEY = "voices-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_checkpoint, voice_prompts, tmp_path_factory):
    voices = tmp_path_factory.mktemp("voices-http") / "voices"
    shutil.copytree(voice_prompts, voices)
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, API_KEY=KEY,
                        VOICE_PROMPTS_PATH=str(voices), REF_AUDIO_URL_ALLOWLIST="127.0.0.1",
                        MAX_REFERENCE_BYTES="2000000") as url:
        yield {"url": url, "voices": voices}


def upload(server, name, data, transcript="Maintaining your ability to learn.", filename="clip.m4a", **form):
    return httpx.post(server["url"] + "/v1/voices", headers=AUTH, timeout=120,
                      data={"name": name, "transcript": transcript, **form},
                      files={"file": (filename, data, "audio/mp4")})


def speak(server, voice):
    return httpx.post(server["url"] + "/v1/audio/speech", headers=AUTH, timeout=300,
                      json={"input": "By name.", "voice": voice, "response_format": "wav", "seed": 1})


def test_upload_use_read_delete(server, voice_prompts):
    clip = encode_recording(voice_prompts / "en_man.wav", "m4a", seconds=3.0)  # a phone's recording
    added = upload(server, "phone_voice", clip, description="Recorded on a phone")
    assert added.status_code == 201, added.text
    assert added.json()["name"] == "phone_voice" and added.json()["kind"] == "clone"
    assert speak(server, "phone_voice").status_code == 200

    read = httpx.get(server["url"] + "/v1/voices/phone_voice", headers=AUTH)
    assert read.status_code == 200
    voice = read.json()
    assert voice["description"] == "Recorded on a phone"
    assert voice["transcript"] == "Maintaining your ability to learn."
    assert voice["duration_seconds"] == pytest.approx(3.0, abs=0.1)
    listed = httpx.get(server["url"] + "/v1/voices", headers=AUTH).json()["voices"]
    assert "phone_voice" in {v["name"] for v in listed}

    again = upload(server, "phone_voice", clip)
    assert again.status_code == 409 and again.json()["error"]["code"] == "voice_exists"
    assert upload(server, "phone_voice", clip, overwrite="true").status_code == 201

    gone = httpx.delete(server["url"] + "/v1/voices/phone_voice", headers=AUTH)
    assert gone.status_code == 200 and gone.json() == {"name": "phone_voice", "deleted": True}
    assert not list(server["voices"].glob("phone_voice*"))
    after = speak(server, "phone_voice")
    assert after.status_code == 400 and after.json()["error"]["code"] == "unknown_voice"
    for method in ("GET", "DELETE"):
        missing = httpx.request(method, server["url"] + "/v1/voices/phone_voice", headers=AUTH)
        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["code"] == "voice_not_found"
        assert missing.json()["error"]["param"] == "name"


@pytest.mark.parametrize(("form", "data", "status", "param", "words"), [
    ({"name": "../etc"}, b"x", 400, "name", "letters, digits"),
    ({"name": "ok", "transcript": "<|audio_bos|>"}, b"x", 400, "transcript", "control tokens"),
    ({"name": "ok"}, b"not audio at all", 400, "file", "cannot decode audio"),
    ({"name": "ok"}, b"", 400, "file", "file is empty"),
])
def test_bad_uploads_name_the_parameter(server, form, data, status, param, words):
    reply = upload(server, data=data, **{"name": "x", **form})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_an_over_size_file_is_413(server):
    reply = upload(server, "big", b"\0" * 2_000_001)
    assert reply.status_code == 413, reply.text
    error = reply.json()["error"]
    assert error["code"] == "too_large" and error["param"] == "file" and "2000000 bytes" in error["message"]


def test_a_missing_part_is_named(server):
    reply = httpx.post(server["url"] + "/v1/voices", headers=AUTH, data={"name": "x", "transcript": "t"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "file"


def test_voices_need_the_key(server, voice_prompts):
    clip = (voice_prompts / "belinda.wav").read_bytes()
    assert httpx.post(server["url"] + "/v1/voices", data={"name": "x", "transcript": "t"},
                      files={"file": ("a.wav", clip)}).status_code == 401
    for method in ("GET", "DELETE"):
        assert httpx.request(method, server["url"] + "/v1/voices/belinda").status_code == 401
    assert (server["voices"] / "belinda.wav").is_file()


def test_concurrent_uploads_of_one_name_leave_one_whole_voice(server, voice_prompts):
    takes = {i: encode_recording(voice_prompts / "en_woman.wav", "webm", seconds=1.0 + i / 4) for i in range(6)}

    def send(i):
        return i, upload(server, "racer", takes[i], transcript=f"Take {i}.", filename="clip.webm")

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(send, takes))
    statuses = sorted(r.status_code for _, r in replies)
    assert statuses == [201] + [409] * 5, [r.text for _, r in replies]
    winner = next(i for i, r in replies if r.status_code == 201)
    voice = httpx.get(server["url"] + "/v1/voices/racer", headers=AUTH).json()
    assert voice["transcript"] == f"Take {winner}."  # the transcript and the audio of the same upload
    assert voice["duration_seconds"] == pytest.approx(1.0 + winner / 4, abs=0.1)
    assert sorted(p.name for p in server["voices"].iterdir() if p.name.startswith(("racer", ".tmp-"))) == [
        "racer.txt", "racer.wav"]


class Files(SimpleHTTPRequestHandler):
    """Serves a folder; /redirect?to=URL answers 302 to URL."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture(scope="module")
def files(tmp_path_factory, voice_prompts):
    folder = tmp_path_factory.mktemp("files")
    (folder / "clip.webm").write_bytes(encode_recording(voice_prompts / "en_woman.wav", "webm", seconds=2.0))
    web = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Files, directory=str(folder)))
    threading.Thread(target=web.serve_forever, daemon=True).start()
    yield web.server_address[1]
    web.shutdown()


def test_ref_audio_url_on_the_running_server(server, files):
    def job(url):
        reply = httpx.post(server["url"] + "/runsync", headers=AUTH, timeout=300,
                           json={"input": {"transcript": "From a URL.", "ref_audio_url": url, "seed": 1,
                                           "max_new_tokens": 40}})
        assert reply.status_code == 200, reply.text
        return reply.json()

    allowed = job(f"http://127.0.0.1:{files}/clip.webm")  # 127.0.0.1 is in REF_AUDIO_URL_ALLOWLIST
    assert allowed["status"] == "COMPLETED", allowed
    assert allowed["output"]["metadata"]["voice_clone"] == "uploaded"
    refused = job(f"http://localhost:{files}/clip.webm")  # the same server by a name not on the list
    assert refused["status"] == "FAILED" and refused["error"].startswith("ref_audio_url: must use https")
    redirected = job(f"http://127.0.0.1:{files}/redirect?to=https://169.254.169.254/latest/meta-data/")
    assert redirected["status"] == "FAILED"
    assert "169.254.169.254, a link-local (cloud metadata) address" in redirected["error"]
