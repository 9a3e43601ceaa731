"""`higgs-tts wyoming`, Home Assistant's protocol, with the real wyoming client against the real
server (a subprocess on the tiny checkpoint)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow  # subprocesses, or over 10 s: not in scripts/test.sh --fast

READ_SECONDS = 300  # one event's wait, at most (the tiny model on a busy CPU)


@pytest.fixture(scope="module")
def wyoming_server(tiny_checkpoint, voice_prompts, tmp_path_factory):
    with running_wyoming(tiny_checkpoint, voice_prompts, tmp_path_factory) as server:
        yield server


@contextlib.contextmanager
def running_wyoming(tiny_checkpoint, voice_prompts, tmp_path_factory):
    """`higgs-tts wyoming` in a subprocess on the tiny checkpoint; yields its port, process and log."""
    model_dir, codec_dir = tiny_checkpoint
    voices = tmp_path_factory.mktemp("wyoming") / "voices"
    shutil.copytree(voice_prompts, voices)
    port = free_port()
    env = {**os.environ, "MODEL_PATH": str(model_dir), "TOKENIZER_PATH": str(codec_dir),
           "VOICE_PROMPTS_PATH": str(voices), "DEVICE": "cpu"}
    log = open(tmp_path_factory.mktemp("logs") / "wyoming.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "higgs_tts.cli", "wyoming", "--uri", f"tcp://127.0.0.1:{port}"],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, "the Wyoming server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the Wyoming server did not listen"
            time.sleep(0.2)
    try:
        yield {"port": port, "log": log, "process": process}
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        log.close()


def client(server) -> AsyncTcpClient:
    return AsyncTcpClient("127.0.0.1", server["port"], connect_timeout=10, read_timeout=READ_SECONDS)


async def read_until(conn: AsyncTcpClient, *done_types: str) -> list:
    events = []
    while True:
        event = await conn.read_event()
        assert event is not None, f"the server closed the connection after {[e.type for e in events]}"
        events.append(event)
        if any(kind.is_type(event.type) for kind in done_types):
            return events


def audio_of(events: list) -> bytes:
    return b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))


def check_clip(events: list) -> None:
    """AudioStart (24 kHz, 16-bit, mono), at least one AudioChunk of whole samples, AudioStop."""
    kinds = [e.type for e in events]
    assert kinds[0] == "audio-start" and kinds[-1] == "audio-stop" and "audio-chunk" in kinds, kinds
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    for event in events:
        if AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            assert (chunk.rate, chunk.width, chunk.channels) == (24000, 2, 1) and len(chunk.audio) % 2 == 0


def run(coroutine):
    return asyncio.run(coroutine)


def test_describe_lists_every_voice_with_streaming(wyoming_server, voice_prompts):
    async def go():
        async with client(wyoming_server) as conn:
            await conn.write_event(Describe().event())
            return Info.from_event(await conn.read_event())

    info = run(go())
    assert len(info.tts) == 1
    program = info.tts[0]
    assert program.supports_synthesize_streaming and program.installed
    names = {voice.name for voice in program.voices}
    clips = {p.stem for p in voice_prompts.glob("*.wav")}
    assert clips <= names and "belinda" in names
    for voice in program.voices:
        assert voice.description and voice.languages == ["en", "zh"]


def test_synthesize_sends_audio_between_start_and_stop(wyoming_server):
    async def go():
        async with client(wyoming_server) as conn:
            await conn.write_event(Synthesize(text="Hello there.", voice=SynthesizeVoice(name="belinda")).event())
            return await read_until(conn, AudioStop, Error)

    events = run(go())
    check_clip(events)
    assert len(audio_of(events)) >= 2


def test_streaming_synthesize_speaks_each_sentence_then_stops(wyoming_server):
    async def go():
        async with client(wyoming_server) as conn:
            await conn.write_event(SynthesizeStart(voice=SynthesizeVoice(name="en_man")).event())
            for piece in ("Good morn", "ing. The sun ", "is out. See you"):
                await conn.write_event(SynthesizeChunk(text=piece).event())
            # Home Assistant sends the whole text too, for servers that do not stream: not spoken twice
            await conn.write_event(Synthesize(text="Good morning. The sun is out. See you").event())
            await conn.write_event(SynthesizeStop().event())
            return await read_until(conn, SynthesizeStopped, Error)

    events = run(go())
    kinds = [e.type for e in events]
    assert kinds[-1] == "synthesize-stopped" and "error" not in kinds, kinds
    # three sentences: three clips, each AudioStart ... AudioStop
    clips, current = [], None
    for event in events[:-1]:
        if AudioStart.is_type(event.type):
            assert current is None, kinds
            current = [event]
        else:
            assert current is not None, kinds
            current.append(event)
            if AudioStop.is_type(event.type):
                clips.append(current)
                current = None
    assert current is None and len(clips) == 3, kinds
    for clip in clips:
        check_clip(clip)


def test_an_error_leaves_the_connection_usable(wyoming_server):
    async def go():
        async with client(wyoming_server) as conn:
            await conn.write_event(Synthesize(text="Hi.", voice=SynthesizeVoice(name="no_such_voice")).event())
            refused = await read_until(conn, AudioStop, Error)
            await conn.write_event(Synthesize(text="   ").event())
            empty = await read_until(conn, AudioStop, Error)
            await conn.write_event(SynthesizeStart(voice=SynthesizeVoice(name="no_such_voice")).event())
            await conn.write_event(SynthesizeChunk(text="Hello.").event())
            await conn.write_event(SynthesizeStop().event())
            refused_stream = await read_until(conn, SynthesizeStopped)
            await conn.write_event(Synthesize(text="Fine now.").event())
            good = await read_until(conn, AudioStop, Error)
            return refused, empty, refused_stream, good

    refused, empty, refused_stream, good = run(go())
    assert [e.type for e in refused] == ["error"]
    error = Error.from_event(refused[0])
    assert error.code == "unknown_voice" and "voice" in error.text and "no_such_voice" in error.text
    assert "ref_audio" not in error.text  # the client's own field name
    assert [e.type for e in empty] == ["error"] and "text" in Error.from_event(empty[0]).text
    assert [e.type for e in refused_stream] == ["error", "synthesize-stopped"]
    assert Error.from_event(refused_stream[0]).code == "unknown_voice"
    check_clip(good)


def test_two_clients_at_once(wyoming_server):
    async def one(text: str):
        async with client(wyoming_server) as conn:
            await conn.write_event(Synthesize(text=text, voice=SynthesizeVoice(name="belinda")).event())
            return await read_until(conn, AudioStop, Error)

    async def both():
        return await asyncio.gather(one("The first client speaks."), one("And the second one too."))

    for events in run(both()):
        check_clip(events)


LONG = " ".join(["This sentence is one of many, so the text takes a while to speak."] * 20)


def test_a_client_that_leaves_and_sigterm(tiny_checkpoint, voice_prompts, tmp_path_factory):
    """A client gone mid-request leaves the server serving; SIGTERM stops a running generation and
    the server (a bound on the wait, not a timing: the long text alone takes far longer)."""
    with running_wyoming(tiny_checkpoint, voice_prompts, tmp_path_factory) as server:
        async def go():
            async with client(server) as leaving:
                await leaving.write_event(Synthesize(text=LONG).event())
                await read_until(leaving, AudioChunk)
            async with client(server) as staying:
                await staying.write_event(Synthesize(text="Still here.").event())
                events = await read_until(staying, AudioStop, Error)
            check_clip(events)
            async with client(server) as last:
                await last.write_event(Synthesize(text=LONG).event())
                await read_until(last, AudioStart)
                server["process"].send_signal(signal.SIGTERM)
                return await asyncio.to_thread(server["process"].wait, 60)

        assert run(go()) == 0
        server["log"].seek(0)
        output = server["log"].read()
        assert "Traceback" not in output, output[-3000:]


def test_settings_read_the_uri_and_the_languages(monkeypatch):
    from higgs_tts.settings import WYOMING_LANGUAGES, WYOMING_URI, ServerSettings

    monkeypatch.delenv("WYOMING_URI", raising=False)
    monkeypatch.delenv("WYOMING_LANGUAGES", raising=False)
    defaults = ServerSettings.from_env()
    assert (defaults.wyoming_uri, defaults.wyoming_languages) == (WYOMING_URI, WYOMING_LANGUAGES)
    assert WYOMING_URI == "tcp://0.0.0.0:10200"
    monkeypatch.setenv("WYOMING_URI", "unix:///tmp/higgs.sock")
    monkeypatch.setenv("WYOMING_LANGUAGES", " en, de ,")
    chosen = ServerSettings.from_env()
    assert (chosen.wyoming_uri, chosen.wyoming_languages) == ("unix:///tmp/higgs.sock", ("en", "de"))


def audit_lines(server) -> list[dict]:
    server["log"].flush()
    with open(server["log"].name) as log:
        return [json.loads(line[line.index("{"):]) for line in log if '"event": "job"' in line]


def test_every_request_has_its_audit_line(wyoming_server):
    """A Synthesize is a generation job, a streamed request a live session: each ends with one line
    (written by its Outcome), never with the text."""
    before = len(audit_lines(wyoming_server))

    async def go():
        async with client(wyoming_server) as conn:
            await conn.write_event(Synthesize(text="Audited once.", voice=SynthesizeVoice(name="belinda")).event())
            await read_until(conn, AudioStop, Error)
            await conn.write_event(SynthesizeStart(voice=SynthesizeVoice(name="belinda")).event())
            await conn.write_event(SynthesizeChunk(text="Audited live. And again.").event())
            await conn.write_event(SynthesizeStop().event())
            await read_until(conn, SynthesizeStopped, Error)

    run(go())
    deadline = time.monotonic() + 30
    while len(audit_lines(wyoming_server)) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    one, live = audit_lines(wyoming_server)[before:]
    assert (one["action"], one["status"], one["delivery"]) == ("generate", "ok", "stream")
    assert (live["action"], live["status"], live["delivery"], live["segments"]) == ("live", "ok", "wyoming", 2)
    assert live["ref_audio"] == one["ref_audio"] == "belinda" and live["audio_duration"] > 0
    assert "Audited" not in json.dumps([one, live])
