"""The counter behind `bench --anatomy`, and the engine's structure as it counts it: the targets of
docs/engine.md, on the tiny checkpoint expanded to the real model's 28 layers."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from higgs_tts.core.checkpoint import load_model
from higgs_tts.tools import bench
from higgs_tts.tools.anatomy import Anatomy


def test_counts_computing_operators_and_not_views():
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    with Anatomy() as counted:
        c = a + b  # 1
        d = c.view(8, 4).t()[1:]  # views: 0
        d.contiguous()  # a copy: 1
        e = torch.addmm(a, c, torch.randn(8, 8))  # randn, addmm: 2
        F.rms_norm(e, (8,), torch.ones(8), 1e-5)  # ones: 1; rms_norm, fused on CUDA: 1 however the CPU runs it
        q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)  # 3
        F.scaled_dot_product_attention(q, k, v)  # 1
    assert counted.kernels == 1 + 1 + 2 + 2 + 4
    assert counted.syncs == 0
    assert counted.by_op["rms_norm"] == 1 and counted.by_op["scaled_dot_product_attention"] == 1


def test_counts_what_makes_the_host_wait():
    x = torch.arange(10)
    with Anatomy() as counted:
        x[x > 4]  # boolean-mask indexing sizes its output from the data: 1
        x.nonzero()  # 1
        int(x.sum())  # 1
        host = x.to("cpu", copy=True)  # a device-to-host copy: 1
        (host + 1).nonzero()  # work on host data: 0
        host[2:].tolist()  # already on the host: 0
        torch.tensor([1, 2], device=x.device)  # a list copied to the device: 1
    assert counted.syncs == 5, dict(counted.sync_kinds)


@pytest.fixture(scope="module")
def figures(settings):
    loaded = load_model(settings)
    return bench.anatomy(loaded, layers=28, batch_sizes=(1, 4))


@pytest.mark.slow  # 28 layers, counted operator by operator: about a minute on two cores
def test_the_decode_step_meets_its_structural_targets(figures):
    print(json.dumps({k: v for k, v in figures.items() if "by_op" not in k}))
    assert figures["layers"] == 28
    assert figures["captured_kernels_per_layer"] <= 16
    assert figures["captured_kernels_per_step"] <= 28 * 16 + 128  # prologue, sampler, bookkeeping, head
    assert figures["captured_syncs_per_step"] == 0
    assert figures["eager_kernels_per_step"] <= 4
    assert figures["syncs_per_burst"] <= 1
    # One layer's kernels, each a real operator of the fused layer.
    by_op = figures["captured_kernels_by_op"]
    assert by_op["rms_norm"] == 2 * 28 + 1 and by_op["scaled_dot_product_attention"] == 28
    assert by_op["index_put_"] == 28  # one KV write per layer
    # A prompt's prefill: its ids and codes to the host in one copy, one plan back, the sampling settings.
    assert figures["prefill_kernels"] > 0 and figures["prefill_syncs"] <= 3
    assert figures["prefill_syncs_cached_voice"] <= 3
    # Four prompts packed: one copy of their ids and codes, one plan, each one's settings; one pass.
    assert figures["prefill_syncs_4_packed"] <= 4 + 2
    assert figures["prefill_kernels_4_packed"] < 2 * figures["prefill_kernels"]
    assert figures["prefill_tokens"] > 250  # a 10 s reference clip is 259 audio positions
    # The same voice again: its prefix comes from the prefix cache, the text's own tokens are run.
    text_tokens = len(figures["text"].split()) * 2
    assert figures["prefill_tokens_cached_voice"] <= 64 + text_tokens
    assert figures["prefill_kernels_cached_voice"] <= figures["prefill_kernels"]
    assert 1 <= figures["first_audio_frames"] <= 16  # the streaming decoder's first piece: 8 frames + 8 of context
    assert set(figures["host_ms_per_step"]) == {"b1", "b4"}


@pytest.mark.slow  # a subprocess
def test_bench_anatomy_json_from_the_command_line(tiny_checkpoint, settings):
    from tools.test_bench import bench_env

    done = subprocess.run([sys.executable, "-m", "higgs_tts.cli", "bench", "--anatomy", "--json", "--layers", "3"],
                          env=bench_env(tiny_checkpoint, settings), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["layers"] == 3
    for key in ("captured_kernels_per_layer", "captured_kernels_per_step", "eager_kernels_per_step",
                "syncs_per_burst", "prefill_kernels", "prefill_syncs", "prefill_tokens", "prefill_tokens_cached_voice",
                "first_audio_frames", "host_ms_per_step"):
        assert key in result, key
    assert set(result["host_ms_per_step"]) == {"b1", "b8", "b32"}
    if torch.device(settings.device).type == "cuda":
        assert result["frames_per_s_b1"] > 0 and 0 < result["roofline_fraction"]
