"""What a long reference costs a running server, at any sample rate (issue #30): a 117 KB WAV at 997 Hz
(60 s) must grow `higgs-tts serve` by less than 150 MB, eight at once by less than 400 MB. Measured on the
real server process: its peak resident memory (reset first through /proc) over its resident memory before
the requests."""

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


def test_a_long_reference_costs_a_bounded_amount_once_or_eight_at_once(server):
    url, pid = server
    # model, codec and code paths (torchaudio's resampler at 44.1 kHz, libswresample at 997 Hz): loaded once
    for warm in (job(None), job(odd_rate_reference(150, rate=44100, seconds=2.0)),
                 job(odd_rate_reference(160, seconds=2.0))):
        assert httpx.post(url + "/runsync", json=warm, timeout=600).json()["status"] == "COMPLETED"

    # The first long reference: the encode's memory is taken from the allocator for the first time.
    single = peak_growth(url, pid, [job(odd_rate_reference(220))])  # 60 s at 997 Hz: 117 KB
    native = peak_growth(url, pid, [job(odd_rate_reference(210, rate=24000))])  # 60 s at 24 kHz: no resampling
    eight = peak_growth(url, pid, [job(odd_rate_reference(230 + 10 * i)) for i in range(8)])
    print(f"peak growth: 60 s at 997 Hz +{single / MB:.0f} MB, then 60 s at 24 kHz +{native / MB:.0f} MB, "
          f"eight at 997 Hz at once +{eight / MB:.0f} MB")
    # The bounds. Once +370 MB and +2.9 GB (a resampler bank that grew with the rate's ratio to
    # 24 kHz; encodes side by side); then, in this order, +430 to +470 MB and +0.78 GB (the codec over the
    # whole clip; libswresample holding the clip several times over; each request thread's heap keeping its
    # own peak). Then, on a 2-core CPU machine with the tiny checkpoint: +65 to +156 MB from run to run (glibc's
    # moving mmap threshold) and +100 to +170 MB; with the threshold fixed (MALLOC_MMAP_THRESHOLD): +84 MB every
    # run and +114 to +118 MB.
    assert single < 150 * MB, f"+{single / MB:.0f} MB for one 60 s reference"
    assert eight < 400 * MB, f"+{eight / MB:.0f} MB for eight at once"
