"""First audio of a streamed sentence comes early on default settings, on a CPU too: `ENGINE=auto` is
the fast engine everywhere, which hands out frames per burst and the streaming decoder's first piece
after 16 frames. (transformers' generate() hands out a chunk only when it is whole, so its first
byte came with its last: Pipecat reports "context completed with no audio" after about 3 s.)

A real `higgs-tts serve` with no engine setting, a real HTTP client reading the stream as it comes."""

import time

import httpx
import pytest
from conftest import serve_process

pytestmark = pytest.mark.slow  # a server process

# One chunk of 28 words (the default chunking keeps it whole); seed 9 speaks it for 240
# frames (9.6 s) in alloy's voice on the tiny checkpoint, so there is a stream to be early in.
SENTENCE = ("The quick brown fox jumps over the lazy dog while the morning sun rises slowly above the quiet "
            "hills and the river keeps flowing toward the distant sea.")


@pytest.fixture
def server(tiny_checkpoint, voice_prompts, tmp_path, monkeypatch):
    monkeypatch.delenv("ENGINE", raising=False)  # the default: auto
    with serve_process(tiny_checkpoint, voice_prompts, tmp_path) as (url, _):
        yield url


def timed_stream(url: str, body: dict) -> tuple[float, float, int]:
    """(seconds to the first audio bytes, seconds to the last, bytes) of a streamed speech reply."""
    start = time.perf_counter()
    first, size = None, 0
    with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=300) as reply:
        assert reply.status_code == 200, reply.read()
        for data in reply.iter_bytes():
            if data and first is None:
                first = time.perf_counter() - start
            size += len(data)
    return first, time.perf_counter() - start, size


def test_a_streamed_sentence_sends_its_first_audio_before_half_its_time(server):
    body = {"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "pcm", "stream": True,
            "seed": 9}
    timed_stream(server, {**body, "input": "Warm up.", "max_new_tokens": 20})  # the model loads on first use
    first, total, size = timed_stream(server, body)
    frames = size // 2 // 960  # 16-bit samples, 960 a frame
    print(f"first audio after {first:.3f} s of {total:.3f} s ({frames} frames)")
    assert frames >= 100, f"only {frames} frames: too short a take to tell streaming from not"
    assert first < total / 2, f"first audio after {first:.3f} s of {total:.3f} s"
