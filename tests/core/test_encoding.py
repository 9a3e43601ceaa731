"""Reference clip encoding against upstream's tokenizer (tests/core/data/upstream_encoding.json, derived by
running upstream's `_xcodec_encode` on the tiny codec's layers; docs/upstream-fidelity.md)."""

import json
from pathlib import Path

import pytest
import torch

from higgs_tts.core.encoding import encode_clip

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
