"""`WS /v1/audio/speech/stream` against `higgs-tts serve` (fast engine on CPU, tiny checkpoint),
through the `websockets` client: text in as it is written, audio out phrase by phrase."""

import base64
import contextlib
import json
import time

import httpx
import numpy as np
import pytest
from conftest import engine_load, running_server, wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

KEY = "live-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
IDLE = 4
RATE = 20
BUFFERED = 300


@pytest.fixture(scope="module")
def server(tiny_checkpoint, voice_prompts, tmp_path_factory):
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, ENGINE="fast", DEVICE="cpu",
                        ENGINE_SLOTS="4", ENGINE_MAX_LEN="2048", API_KEY=KEY, LIVE_IDLE_SECONDS=str(IDLE),
                        LIVE_MAX_MESSAGES_PER_SECOND=str(RATE), LIVE_MAX_BUFFERED_CHARS=str(BUFFERED)) as url:
        yield url


def ws_url(url: str, query: str = "") -> str:
    return url.replace("http://", "ws://") + "/v1/audio/speech/stream" + query


@contextlib.contextmanager
def open_session(url: str, **config):
    with connect(ws_url(url), additional_headers=AUTH, max_size=None) as ws:
        ws.send(json.dumps({"type": "config", **config}))
        ready = json.loads(ws.recv(timeout=120))
        assert ready["type"] == "ready", ready
        yield ws, ready


def receive(ws, timeout: float = 120) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def until_done(ws) -> list[dict]:
    events = []
    while True:
        event = receive(ws)
        events.append(event)
        assert event["type"] != "error", event
        if event["type"] == "done":
            return events


def pcm(events: list[dict]) -> np.ndarray:
    data = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "audio")
    return np.frombuffer(data, dtype="<i2")


IDLE_ENGINE = {"running": 0.0, "waiting": 0.0, "admitted": 0.0}
CONFIG = {"voice": "belinda", "seed": 11, "max_new_tokens": 100}  # phrases of at most 5 words


def test_first_sentence_is_heard_before_the_last_text_is_sent(server):
    with open_session(server, **CONFIG) as (ws, ready):
        assert ready["response_format"] == "pcm" and ready["sample_rate"] == 24000 and ready["seed"] == 11
        ws.send(json.dumps({"type": "text", "text": "Hello there. And"}))
        first = receive(ws)  # sent nothing else yet: the first sentence alone was spoken
        assert first["type"] == "audio" and first["segment"] == 0 and first["start_seconds"] == 0
        for piece in [" then", " some more", " words.", " Last"]:
            ws.send(json.dumps({"type": "text", "text": piece}))
        ws.send(json.dumps({"type": "close"}))
        events = [first, *until_done(ws)]
        segments = [e for e in events if e["type"] == "segment"]
        assert [s["text"] for s in segments] == ["Hello there.", "And then some more words.", "Last"]
        done = events[-1]
        assert done["segments"] == 3 and done["seed"] == 11 and done["first_audio_seconds"] is not None
        audio = pcm(events)
        assert len(audio) == round(done["duration_seconds"] * 24000)
        assert sum(s["duration_seconds"] for s in segments) == pytest.approx(done["duration_seconds"], abs=0.005)
        seqs = [e["seq"] for e in events if e["type"] == "audio"]
        assert seqs == list(range(len(seqs)))
        # each segment's audio comes before its `segment` event, and in order
        order = [e["segment"] for e in events if e["type"] in ("audio", "segment")]
        assert order == sorted(order)
        with pytest.raises(ConnectionClosed):  # the server ends the socket after `done`
            ws.recv(timeout=30)


def test_a_session_sounds_like_one_chunked_request_with_the_same_seed(server):
    text = "One two three. Four five six. Seven eight nine."
    with open_session(server, **CONFIG) as (ws, _):
        ws.send(json.dumps({"type": "text", "text": text + " "}))
        ws.send(json.dumps({"type": "close"}))
        live = pcm(until_done(ws))
        whole = httpx.post(server + "/v1/audio/speech", headers=AUTH, timeout=300, json={
            "input": text, "response_format": "pcm", "chunk_method": "sentence", "chunk_max_word_num": 3, **CONFIG})
        assert whole.status_code == 200 and whole.headers.get("X-Text-Chunks") in (None, "3")
        reference = np.frombuffer(whole.content, dtype="<i2")
        assert len(live) == len(reference) > 0
        # the same frames through the same streaming decoder: equal within rounding to 16 bits
        assert np.abs(live.astype(np.int32) - reference.astype(np.int32)).max() <= 1


# Thirty phrases, queued at once: seconds of work on the tiny model, so they cannot all be done
# before a cancel sent at the first audio (or a disconnect) reaches the server.
MANY = " ".join(f"Word {i}." for i in range(30)) + " "


def test_cancel_stops_speaking_drops_the_rest_and_frees_the_slot(server):
    with open_session(server, voice="belinda", seed=3, max_new_tokens=1500) as (ws, _):
        ws.send(json.dumps({"type": "text", "text": MANY}))
        assert receive(ws)["type"] == "audio"
        ws.send(json.dumps({"type": "cancel"}))
        wait_until(lambda: engine_load(server, AUTH) == IDLE_ENGINE, 60)
        ws.send(json.dumps({"type": "text", "text": "Next one."}))
        ws.send(json.dumps({"type": "close"}))
        events = until_done(ws)
        finished = [e["segment"] for e in events if e["type"] == "segment"]
        assert finished[-1] == 30 and 29 not in finished  # the phrases left when it was cancelled are dropped
        later = [e["segment"] for e in events if e["type"] == "audio"]
        after = later[later.index(30):]
        assert after == [30] * len(after)  # no audio of the cancelled phrases after the new one began
        assert engine_load(server, AUTH) == IDLE_ENGINE


def test_a_disconnect_frees_the_slot(server):
    with open_session(server, voice="belinda", seed=4, max_new_tokens=1500) as (ws, _):
        ws.send(json.dumps({"type": "text", "text": MANY}))
        assert receive(ws)["type"] == "audio"
        ws.socket.close()  # gone without a goodbye: nobody reads the audio of the other phrases
    # a session left running would block on its full event queue and keep its engine place
    wait_until(lambda: engine_load(server, AUTH) == IDLE_ENGINE, 60)


def error_of(ws) -> dict:
    while (event := receive(ws))["type"] != "error":
        pass
    return event


def test_bad_frames_get_error_frames_and_the_session_goes_on(server):
    with open_session(server, **CONFIG) as (ws, _):
        bad = [("not json", "type"), (json.dumps([1, 2]), "type"), (json.dumps({"type": "shout"}), "type"),
               (json.dumps({"type": "config", "voice": "belinda"}), "type"),
               (json.dumps({"type": "text", "text": "hi", "lang": "en"}), "lang"),
               (json.dumps({"type": "text", "text": 5}), "text"),
               (json.dumps({"type": "text", "text": "say <|audio_bos|> now"}), "text"),
               (json.dumps({"type": "text", "text": "bell \x07"}), "text")]
        for frame, param in bad:
            ws.send(frame)
            error = error_of(ws)
            assert error["code"] == "invalid_input" and error["param"] == param, (frame, error)
        ws.send(b"\x00\x01")
        assert error_of(ws)["code"] == "invalid_input"
        ws.send(json.dumps({"type": "text", "text": "x" * (BUFFERED + 1)}))
        error = error_of(ws)
        assert error["code"] == "too_long" and str(BUFFERED) in error["message"] and "LIVE_MAX_BUFFERED_CHARS" in error[
            "message"]
        ws.send(json.dumps({"type": "text", "text": "Still here."}))
        ws.send(json.dumps({"type": "close"}))
        events = until_done(ws)
        assert [e["text"] for e in events if e["type"] == "segment"] == ["Still here."]
        assert httpx.get(server + "/health").status_code == 200


@pytest.mark.parametrize(("config", "code", "param"), [
    ({"voice": "nobody_here"}, "unknown_voice", "voice"),
    ({"temperature": "hot"}, "invalid_input", "temperature"),
    ({"input": "Hello."}, "invalid_input", "input"),
    ({"transcript": "Hello."}, "invalid_input", "transcript"),
    ({"speed": 2.0}, "invalid_input", "speed"),
    ({"response_format": "midi"}, "invalid_input", "response_format"),
    ({"voice": "belinda", "ref_audio": "belinda"}, "invalid_input", "voice"),
    ({"ref_audio_base64": "not base64!"}, "invalid_input", "ref_audio_base64"),
    ({"instructions": "x" * 5001}, "invalid_input", "instructions"),
])
def test_a_bad_config_gets_an_error_frame_naming_the_field(server, config, code, param):
    with connect(ws_url(server), additional_headers=AUTH) as ws:
        ws.send(json.dumps({"type": "config", **config}))
        error = receive(ws)
        assert error["type"] == "error" and error["code"] == code and error["param"] == param, error
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)


def test_the_first_message_must_be_the_config(server):
    with connect(ws_url(server), additional_headers=AUTH) as ws:
        ws.send(json.dumps({"type": "text", "text": "Hello."}))
        error = receive(ws)
        assert error["code"] == "invalid_input" and "config" in error["message"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)


def test_too_many_messages_end_the_session_with_an_error(server):
    with open_session(server, **CONFIG) as (ws, _):
        with pytest.raises(ConnectionClosed):
            for _ in range(RATE * 3):
                ws.send(json.dumps({"type": "flush"}))
            for _ in range(100):
                event = receive(ws)
                if event["type"] == "error":
                    break
            assert event["code"] == "rate_limited" and "LIVE_MAX_MESSAGES_PER_SECOND" in event["message"]
            ws.recv(timeout=30)


def test_an_idle_session_ends_with_an_error(server):
    with open_session(server, **CONFIG) as (ws, _):
        error = receive(ws, timeout=IDLE * 10)  # nothing sent: the server gives up after LIVE_IDLE_SECONDS
        assert error["type"] == "error" and error["code"] == "idle_timeout" and "LIVE_IDLE_SECONDS" in error["message"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)


def test_the_key_may_come_as_a_header_or_a_query_token(server):
    with connect(ws_url(server)) as ws:  # no key
        error = receive(ws)
        assert error["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
    with connect(ws_url(server, "?api_key=wrong")) as ws:
        assert receive(ws)["code"] == "invalid_api_key"
    with connect(ws_url(server, f"?api_key={KEY}")) as ws:  # a browser's way
        ws.send(json.dumps({"type": "config", **CONFIG}))
        assert receive(ws)["type"] == "ready"


def test_a_query_key_never_reaches_the_log(tiny_checkpoint, voice_prompts, tmp_path_factory, tmp_path):
    """uvicorn logs each WebSocket's path with its query string: the key a browser sends there is masked."""
    log = tmp_path / "serve.log"
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, log_to=log, API_KEY=KEY,
                        UVICORN_LOG_LEVEL="info") as url:
        with connect(ws_url(url, f"?api_key={KEY}")) as ws:
            ws.send(json.dumps({"type": "config", **CONFIG}))
            assert receive(ws)["type"] == "ready"
    text = log.read_text()
    assert "WebSocket /v1/audio/speech/stream?api_key=***" in text  # the line is there, its key is not
    assert KEY not in text


def test_sessions_beyond_live_max_sessions_are_told_busy(tiny_checkpoint, voice_prompts, tmp_path_factory):
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, API_KEY=KEY, LIVE_MAX_SESSIONS="1") as url:
        with open_session(url, **CONFIG):
            with connect(ws_url(url), additional_headers=AUTH) as extra:
                error = receive(extra)
                assert error["code"] == "busy" and "LIVE_MAX_SESSIONS" in error["message"]
                with pytest.raises(ConnectionClosed) as closed:
                    extra.recv(timeout=30)
                assert closed.value.rcvd.code == 1013
        deadline = time.monotonic() + 30  # the first session's end is counted once the server sees it
        while True:
            with connect(ws_url(url), additional_headers=AUTH) as again:
                try:
                    again.send(json.dumps({"type": "config", **CONFIG}))
                    reply = receive(again)
                except ConnectionClosed as closed:  # told busy (and closed) before the config went out
                    reply = {"type": "error", "code": closed.rcvd.reason}
                if reply["type"] == "ready":
                    break
                assert reply["code"] == "busy" and time.monotonic() < deadline
            time.sleep(0.2)
