"""Reference clip encoding against upstream's tokenizer (tests/core/data/upstream_encoding.json, derived by
running upstream's `_xcodec_encode` on the tiny codec's layers; docs/upstream-fidelity.md)."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from higgs_tts.core.encoding import WINDOW_SECONDS, encode_clip
from higgs_tts.core.windowed import Reach, in_windows

UPSTREAM = json.loads((Path(__file__).parent / "data" / "upstream_encoding.json").read_text())["cases"]


@pytest.fixture(scope="module")
def codec(tiny_checkpoint):
    from transformers import HiggsAudioV2TokenizerModel

    return HiggsAudioV2TokenizerModel.from_pretrained(tiny_checkpoint[1]).eval()


def _wave(samples):
    return torch.sin(torch.arange(samples) / 7.0)[None, None] * 0.3


@pytest.mark.parametrize("case", UPSTREAM, ids=lambda c: str(c["samples"]))
def test_the_acoustic_encoder_reads_what_upstreams_reads(codec, case):
    """Unpadded first; where the lengths differ, padded by 320 samples a side (transformers' port: 480)."""
    fed = []
    hook = codec.acoustic_encoder.register_forward_pre_hook(lambda module, args: fed.append(int(args[0].shape[-1])))
    try:
        with torch.no_grad():
            codes = encode_clip(codec, _wave(case["samples"]))
    finally:
        hook.remove()
    assert fed == case["acoustic_encoder_inputs"]
    assert codes.shape == (1, 8, case["frames"])


def test_upstream_data_has_padded_cases():
    assert any(len(c["acoustic_encoder_inputs"]) == 2 for c in UPSTREAM)
    assert any(len(c["acoustic_encoder_inputs"]) == 1 for c in UPSTREAM)


def test_same_codes_as_the_port_where_no_padding_is_needed(codec):
    wave = _wave(24000)
    with torch.no_grad():
        assert torch.equal(encode_clip(codec, wave), codec.encode(wave).audio_codes)


def test_stereo_is_refused(codec):
    with pytest.raises(ValueError, match="mono"):
        encode_clip(codec, torch.zeros(1, 2, 960))


# Long clips: their full-rate conv stacks run in windows (WINDOW_SECONDS of audio; higgs_tts/core/windowed.py).
# The reference is the same function with no window (math.inf): the whole clip at once, as before windows.


def encoded(codec, wave, window_seconds):
    """Codes, the embeddings they quantize [B, T, hidden], and how often each full-rate stack ran."""
    seen = {"embeddings": [], "acoustic": 0, "semantic": 0}

    def count(key):
        return lambda module, args: seen.__setitem__(key, seen[key] + 1)

    hooks = [codec.fc.register_forward_hook(lambda module, args, out: seen["embeddings"].append(out)),
             codec.acoustic_encoder.register_forward_pre_hook(count("acoustic")),
             codec.semantic_model.feature_extractor.conv_layers[-1].register_forward_pre_hook(count("semantic"))]
    try:
        with torch.no_grad():
            codes = encode_clip(codec, wave, window_seconds)
    finally:
        for hook in hooks:
            hook.remove()
    return codes, seen["embeddings"][0], seen


def noisy_wave(samples):
    return _wave(samples) + 0.1 * torch.randn(1, 1, samples, generator=torch.Generator().manual_seed(samples))


def assert_the_same_codes_but_near_ties(codec, codes, whole, embeddings):
    """`codes` [B, K, T] are `whole`'s, but in frames where, at the first quantizer they part, the two codewords
    lie equally far from what that quantizer reads (the whole run's residual of `embeddings` [B, hidden, T]) to
    within float rounding; after it, the quantizers read other residuals."""
    parted = (codes != whole).any(dim=1)  # [B, T]
    assert parted.float().mean() <= 0.01, f"{int(parted.sum())} of {parted.numel()} frames differ"
    for b, t in parted.nonzero().tolist():
        first = int((codes[b, :, t] != whole[b, :, t]).nonzero()[0])
        residual = embeddings[b:b + 1, :, t:t + 1]  # [1, hidden, 1]
        for k, quantizer in enumerate(codec.quantizer.quantizers[:first]):
            residual = residual - quantizer.decode(whole[b:b + 1, k, t:t + 1])
        quantizer = codec.quantizer.quantizers[first]
        read = quantizer.project_in(residual[:, :, 0])  # [1, codebook_dim]
        chosen = quantizer.codebook.embed[torch.stack([whole[b, first, t], codes[b, first, t]])]  # [2, codebook_dim]
        distances = (read - chosen).square().sum(-1)
        assert (distances[0] - distances[1]).abs() <= 1e-4 * distances.min(), (b, t, first, distances)


def windows_keep_the_codes(codec, samples, window_seconds) -> dict:
    """The windowed encode quantizes what the whole clip's does, to float rounding: its acoustic half is the
    whole clip's bit for bit where every window takes the whole clip's conv kernels (on this CPU, at
    WINDOW_SECONDS), its semantic half normalizes with statistics summed over windows (in float64, not in one
    float32 pass). So its codes are the whole clip's, but where two codewords tie to within that rounding
    (one cell in thousands). Returns how often each stack ran in the windowed encode."""
    wave = noisy_wave(samples)
    whole, whole_embeddings, whole_runs = encoded(codec, wave, math.inf)
    codes, embeddings, runs = encoded(codec, wave, window_seconds)
    assert (embeddings - whole_embeddings).abs().max() <= 1e-5 * whole_embeddings.abs().max()
    with torch.no_grad():
        assert_the_same_codes_but_near_ties(codec, codes, whole, whole_embeddings.transpose(1, 2))
    assert whole_runs["semantic"] == 1
    return {**runs, "padded": whole_runs["acoustic"] == 2}  # upstream's second, padded acoustic pass


@pytest.mark.parametrize(("over", "acoustic", "semantic"),
                         [(1, 1, 1), (480, 1 + 1, 2), (WINDOW_SECONDS * 24000 + 700, 3, 3)])
def test_a_clip_over_the_window_has_the_whole_clips_codes(codec, over, acoustic, semantic):
    """Windows of each stack (WINDOW_SECONDS = 5: 125 acoustic, 250 semantic frames a window): just over it,
    every frame fits one (the windows' own arithmetic); 125 acoustic frames, then 126 for upstream's padded
    pass, each within one window and its receptive field (so each stack runs once a pass), and 251 semantic
    ones in two windows; 251 and 502, on two windows' worth of audio plus 700 samples."""
    runs = windows_keep_the_codes(codec, WINDOW_SECONDS * 24000 + over, WINDOW_SECONDS)
    assert (runs["acoustic"], runs["semantic"]) == (acoustic, semantic)


def test_small_windows_keep_the_codes_padded_or_not(codec):
    """One-second windows (shorter than the acoustic receptive field, 45636 samples): many windows, and clip
    lengths upstream pads (acoustic and semantic lengths differ) as well as lengths it does not."""
    runs = [windows_keep_the_codes(codec, samples, 1) for samples in (24480, 49439, 71999, 72000, 100000)]
    assert any(r["padded"] for r in runs) and not all(r["padded"] for r in runs)
    assert all(r["semantic"] >= 2 for r in runs)


def test_windows_keep_the_codes_with_every_norm_weight_in_play(codec):
    """The tiny codec is saved with GroupNorm's ones and zeros: here random ones, as a trained codec has."""
    varied = copy.deepcopy(codec)
    torch.manual_seed(1)
    with torch.no_grad():
        for module in varied.semantic_model.feature_extractor.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1.0, 0.5)
                module.bias.normal_(0.0, 0.5)
    for samples in (30000, 60000):
        windows_keep_the_codes(varied, samples, 1)


def test_at_the_window_the_acoustic_features_are_the_whole_clips_bit_for_bit(codec):
    reach = Reach.of(codec.acoustic_encoder)
    for samples in (WINDOW_SECONDS * 24000 + 1, 2 * WINDOW_SECONDS * 24000 + 1120, 25 * 24000 + 123):
        wave = noisy_wave(samples)
        with torch.no_grad():
            whole = codec.acoustic_encoder(wave)
            assert torch.equal(in_windows(codec.acoustic_encoder, reach, wave, WINDOW_SECONDS * 24000), whole)


def test_a_clip_of_one_window_is_encoded_whole(codec):
    wave = noisy_wave(WINDOW_SECONDS * 24000)
    codes, _, runs = encoded(codec, wave, WINDOW_SECONDS)
    assert runs["acoustic"] in (1, 2) and runs["semantic"] == 1
    assert torch.equal(codes, encoded(codec, wave, math.inf)[0])


PEAK = """
import sys
from pathlib import Path
import torch
from transformers import HiggsAudioV2TokenizerModel
from higgs_tts.core.encoding import encode_clip

def resident(field):
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status[field].split()[0]) * 1024

codec = HiggsAudioV2TokenizerModel.from_pretrained(sys.argv[1]).eval()
with torch.inference_mode():
    encode_clip(codec, torch.zeros(1, 1, 48000))  # first-call allocations
    wave = torch.sin(torch.arange(int(24000 * float(sys.argv[2]))) / 7.0)[None, None] * 0.3
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to VmRSS
    before = resident("VmRSS")
    encode_clip(codec, wave)
    print(resident("VmHWM") - before)
"""


def peak_growth(codec_dir, seconds: float) -> int:
    """How far a fresh process's resident memory peaks above where it was while it encodes `seconds` of audio."""
    done = subprocess.run([sys.executable, "-c", PEAK, str(codec_dir), str(seconds)], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_the_encodes_peak_memory_does_not_grow_with_the_clip(tiny_checkpoint):
    """Whole, 60 s peaked about 220 MB above 20 s with the tiny codec (+360 MB against +140 MB); in windows
    only the clip itself and its 16 kHz copy (about 6 MB and 4 MB a minute), and the features at 25 to 50 frames
    a second, still grow with it."""
    short, long = peak_growth(tiny_checkpoint[1], 20), peak_growth(tiny_checkpoint[1], 60)
    print(f"encode peak: 20 s +{short / 2**20:.0f} MB, 60 s +{long / 2**20:.0f} MB")
    assert long < short + 64 * 2**20, f"+{short / 2**20:.0f} MB for 20 s, +{long / 2**20:.0f} MB for 60 s"
