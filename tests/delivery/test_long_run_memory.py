"""A long mixed load levels off: after a few rounds, further rounds of every kind of request grow
`higgs-tts serve` by little (docs/operations.md, "Memory over a long run", says what it keeps and
why). The real server process's resident memory, read from /proc after each round."""

import base64
import time
from pathlib import Path

import httpx
import pytest
from conftest import serve_process

pytestmark = pytest.mark.slow  # subprocesses, or over 10 s: not in scripts/test.sh --fast

MB = 2**20
WARM_ROUNDS, ROUNDS = 4, 8
MAX_GROWTH_PER_ROUND = 3 * MB  # on average over ROUNDS: what /run results kept and the allocator's reuse add


@pytest.fixture
def server(tiny_checkpoint, voice_prompts, tmp_path):
    with serve_process(tiny_checkpoint, voice_prompts, tmp_path) as (url, process):
        yield url, process.pid


def resident(pid: int) -> int:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024


def mixed_round(url: str, clip: bytes, n: int) -> None:
    """One of each: speech whole and streamed, /runsync with and without a clip, /run polled to its
    end, a voice uploaded and deleted."""
    quick = {"max_new_tokens": 50, "seed": n}
    whole = httpx.post(url + "/v1/audio/speech", timeout=120,
                       json={"input": f"Round {n}.", "voice": "belinda", "response_format": "wav", **quick})
    assert whole.status_code == 200
    with httpx.stream("POST", url + "/v1/audio/speech", timeout=120,
                      json={"input": "Streaming.", "voice": "chadwick", "response_format": "mp3", **quick}) as s:
        assert s.status_code == 200 and sum(len(b) for b in s.iter_bytes()) > 0
    for job in ({"transcript": "Sync.", **quick},
                {"transcript": "With a clip.", "ref_audio_base64": base64.b64encode(clip).decode(),
                 "ref_audio_transcript": "A clip.", **quick}):
        assert httpx.post(url + "/runsync", json={"input": job}, timeout=120).json()["status"] == "COMPLETED"
    job_id = httpx.post(url + "/run", json={"input": {"transcript": "Later.", **quick}}, timeout=60).json()["id"]
    while httpx.get(url + f"/status/{job_id}", timeout=60).json()["status"] not in ("COMPLETED", "FAILED"):
        time.sleep(0.2)
    added = httpx.post(url + "/v1/voices", timeout=120, data={"name": "passing", "transcript": "A voice.",
                       "overwrite": "true"}, files={"file": ("clip.wav", clip, "audio/wav")})
    assert added.status_code == 201
    assert httpx.delete(url + "/v1/voices/passing", timeout=60).status_code == 200


def test_a_long_mixed_load_levels_off(server, voice_prompts):
    url, pid = server
    clip = (voice_prompts / "chadwick.wav").read_bytes()
    for n in range(WARM_ROUNDS):
        mixed_round(url, clip, n)
    start = resident(pid)
    for n in range(WARM_ROUNDS, WARM_ROUNDS + ROUNDS):
        mixed_round(url, clip, n)
    growth = resident(pid) - start
    print(f"{ROUNDS} rounds after {WARM_ROUNDS}: +{growth / MB:.1f} MB")
    assert growth < ROUNDS * MAX_GROWTH_PER_ROUND, f"+{growth / MB:.1f} MB over {ROUNDS} rounds"
