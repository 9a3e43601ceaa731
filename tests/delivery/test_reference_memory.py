"""What a reference costs a running server is bounded by its duration, at any sample rate: a 117 KB
WAV at 997 Hz (60 s) once grew `higgs-tts serve` by +371 MB more than its duration explains, eight at
once by +2.9 GB (the resampler's filter bank grew with the rate's ratio to 24 kHz, and concurrent
references were encoded side by side). Measured on the real server process: its peak resident memory
(reset first through /proc) over its resident memory before the requests."""

import base64
import concurrent.futures
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import serve_process

pytestmark = pytest.mark.slow  # subprocesses, or over 10 s: not in scripts/test.sh --fast

MB = 2**20


def odd_rate_reference(tone_hz: float, rate: int = 997, seconds: float = 60.0) -> str:
    """A 16-bit WAV at `rate` (117 KB at 997 Hz), base64; each tone its own clip (no cache hit)."""
    t = np.arange(int(rate * seconds)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32), rate, format="WAV",
             subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak since the last reset) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to the current VmRSS (Linux 4.0+)


@pytest.fixture
def server(tiny_checkpoint, voice_prompts, tmp_path):
    with serve_process(tiny_checkpoint, voice_prompts, tmp_path, MAX_CONCURRENCY="8") as (url, process):
        yield url, process.pid


def job(reference: str | None) -> dict:
    extra = {"ref_audio_base64": reference, "ref_audio_transcript": "A steady tone."} if reference else {}
    # MAX_CONCURRENCY 8: the eight generate together, as they would on a busy server
    return {"input": {"transcript": "Hello there.", "max_new_tokens": 25, "seed": 1, **extra}}


def peak_growth(url: str, pid: int, jobs: list[dict]) -> int:
    """How far the server's resident memory peaks above where it was, while `jobs` run at once."""
    reset_peak(pid)
    before = memory(pid)["VmRSS"]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(lambda j: httpx.post(url + "/runsync", json=j, timeout=600).json(), jobs))
    assert all(r["status"] == "COMPLETED" for r in replies), replies
    return memory(pid)["VmHWM"] - before


def test_an_odd_rate_costs_what_its_duration_does_and_concurrent_ones_do_not_multiply(server):
    url, pid = server
    for warm in (job(None), job(odd_rate_reference(150, rate=44100, seconds=2.0))):  # model, codec, code paths
        assert httpx.post(url + "/runsync", json=warm, timeout=600).json()["status"] == "COMPLETED"

    native = peak_growth(url, pid, [job(odd_rate_reference(210, rate=24000))])  # 60 s at 24 kHz: no resampling
    single = peak_growth(url, pid, [job(odd_rate_reference(220))])  # 60 s at 997 Hz: 117 KB
    eight = peak_growth(url, pid, [job(odd_rate_reference(230 + 10 * i)) for i in range(8)])
    print(f"peak growth: 60 s at 24 kHz +{native / MB:.0f} MB; at 997 Hz +{single / MB:.0f} MB, "
          f"eight at once +{eight / MB:.0f} MB")
    # The rate adds a fixed allowance at most (its filter bank once added +371 MB); the rest is the
    # codec's encoding of 60 s, the same at every rate.
    assert single < native + 100 * MB, f"+{single / MB:.0f} MB at 997 Hz, +{native / MB:.0f} MB at 24 kHz"
    # Eight at once cost one encoding (they are taken one at a time) plus each request's own decoded
    # clip and buffers, about 50 MB each: at most 100 MB a request over one. They once added 2.5 GB
    # (eight encodings side by side); measured since, +0.66 to +0.85 GB over +0.26 to +0.41 GB for one.
    # (The target, +400 MB for eight, needs the encode itself bounded: docs/operations.md.)
    # "One" is the larger single measurement: the 997 Hz one runs second and reuses memory the 24 kHz
    # one left to the allocator, so it alone can read low.
    one = max(single, native)
    assert eight < one + 8 * 100 * MB, f"+{eight / MB:.0f} MB for eight, +{one / MB:.0f} MB for one"
