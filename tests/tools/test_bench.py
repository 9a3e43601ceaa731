"""`higgs-tts bench` runs with the tiny checkpoint on the tests' device and reports every figure."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools


def bench_env(tiny_checkpoint, settings) -> dict:
    """The tiny checkpoint, on the device and dtype the other tests use (HIGGS_TEST_DEVICE/DTYPE)."""
    model_dir, codec_dir = tiny_checkpoint
    return {**os.environ, "MODEL_PATH": str(model_dir), "TOKENIZER_PATH": str(codec_dir), "DEVICE": settings.device,
            "DTYPE": settings.dtype}


def test_bench_json_has_every_figure(tiny_checkpoint, settings):
    env = bench_env(tiny_checkpoint, settings)
    done = subprocess.run(
        [sys.executable, "-m", "higgs_tts.cli", "bench", "--json", "--steps", "24", "--reference-steps", "8",
         "--batch-sizes", "1,3", "--concurrency", "1,3"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    device = torch.device(settings.device)
    # bench names a GPU by its model ("NVIDIA H200"), the CPU as "cpu"
    assert result["device"] == (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    assert result["dtype"] == settings.dtype
    assert [b["batch"] for b in result["batches"]] == [1, 3]
    for b in result["batches"]:
        assert b["steps"] == 24 and b["frames_per_s_per_stream"] > 0
        assert abs(b["audio_seconds_per_s"] - b["batch"] * b["frames_per_s_per_stream"] / 25) < 1e-6
    for key in ("weight_bytes_per_step", "copy_bandwidth_gbs", "roofline_frames_per_s", "first_frame_ms",
                "clone_prefill_ms", "codec_decode_s_per_min", "reference_frames_per_s", "roofline_fraction"):
        assert result[key] > 0, key
    assert result["clone_prompt_tokens"] > 250  # a 10 s reference clip is 259 audio positions
    assert result["stream_first_audio_ms"] > 0
    # An underrun is a chunk that arrived after its playback deadline: there are some exactly when the
    # smallest margin is negative.
    assert isinstance(result["stream_underruns"], int)
    assert (result["stream_underruns"] > 0) == (result["stream_min_slack_s"] < -1e-6)
    assert [c["streams"] for c in result["concurrency"]] == [1, 3]
    for c in result["concurrency"]:
        assert c["audio_seconds_per_s"] > 0 and c["x_real_time_per_stream"] > 0 and c["time_to_first_audio_ms"] > 0
        assert c["time_to_first_audio_p95_ms"] >= c["time_to_first_audio_ms"]
        assert 0 < c["slowest_stream_x_real_time"] <= c["x_real_time_per_stream"]  # every stream has audio
        assert c["codec_pieces_per_call"] >= 1


def test_bench_table_for_people(tiny_checkpoint, settings):
    env = bench_env(tiny_checkpoint, settings)
    done = subprocess.run(
        [sys.executable, "-m", "higgs_tts.cli", "bench", "--steps", "16", "--reference-steps", "4",
         "--batch-sizes", "1"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for label in ("roofline, batch 1", "fast engine, batch 1", "time to first audio frame",
                  "reference generate(), batch 1", "codec decode per minute of audio", "streamed, cloned voice"):
        assert label in done.stdout
