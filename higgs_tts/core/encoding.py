"""Codec codes of a reference clip, computed as upstream's audio tokenizer computes them.

Upstream (`boson_multimodal/audio_processing/higgs_audio_tokenizer.py`, `_xcodec_encode`): when the
acoustic and semantic feature lengths differ, the acoustic encoder reads the audio padded by
160 * semantic_downsample_factor samples on each side (320 at 24 kHz / 16 kHz), and the longer of
the two feature streams is trimmed to the shorter. transformers' port pads hop // 2 (480) and never
trims, so for some clip lengths its codes are shifted by 160 samples. The layers are the port's own.

A clip longer than WINDOW_SECONDS runs its two full-rate conv stacks, the acoustic (DAC) encoder and
HuBERT's conv feature encoder, in windows of that much audio plus their receptive field (`windowed.py`),
so the encode's peak memory is set by the window, not by the clip: whole, those stacks' activations
over 60 s cost hundreds of MB with the tiny test codec and gigabytes with the real one. Their output,
and everything after them (HuBERT's transformer with its global attention, the averaging of its hidden
states, the semantic encoder, the quantizer), is at 25 to 50 frames a second and runs whole. The codes
are the whole clip's, but where two codewords tie to within float rounding: the windows compute what the
whole clip does, and round alike but for HuBERT's GroupNorm statistics (see `windowed.py`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .windowed import Reach, feature_encoder_in_windows, in_windows

ENCODING = "upstream-pad-trim"  # part of the code cache key: codes made otherwise are not reused
# Audio per window of a long clip's encode; shorter clips are encoded whole, and so is a stack whose one
# window would read the whole clip anyway (the acoustic encoder up to 6.9 s: 5 s plus its 1.9 s receptive
# field). Past that, the acoustic encoder computes about 37% more than one pass (each window also reads the
# receptive field), and a window holds about 40 MB at its peak with the tiny codec on a CPU (10 s: about 60 MB).
WINDOW_SECONDS = 5


def encode_clip(codec, input_values: torch.Tensor, window_seconds: float = WINDOW_SECONDS) -> torch.Tensor:
    """Codes `[B, num_quantizers, T]` of `[B, 1, samples]` audio at the codec's sample rate; a clip longer than
    `window_seconds` has its full-rate conv stacks run in windows of that much audio."""
    if input_values.shape[1] != 1:
        raise ValueError(f"audio must be mono, but got {input_values.shape[1]} channels")
    acoustic_encoder, semantic_windows = codec.acoustic_encoder, contextlib.nullcontext()
    if input_values.shape[2] > window_seconds * codec.config.sample_rate:
        acoustic_encoder = _in_windows(codec.acoustic_encoder, int(window_seconds * codec.config.sample_rate))
        semantic_windows = feature_encoder_in_windows(codec.semantic_model,
                                                      int(window_seconds * codec.config.semantic_sample_rate))
    with semantic_windows:  # resampling to 16 kHz, HuBERT's transformer and the hidden states' mean run whole
        semantic_features = codec._extract_semantic_features(input_values).detach()
    semantic = codec.encoder_semantic(semantic_features.transpose(1, 2))
    acoustic = acoustic_encoder(input_values)
    if acoustic.shape[2] != semantic.shape[2]:
        pad = 160 * codec.config.semantic_downsample_factor
        acoustic = acoustic_encoder(F.pad(input_values, (pad, pad)))
    length = min(acoustic.shape[2], semantic.shape[2])
    embeddings = torch.cat([acoustic[:, :, :length].to(semantic.device), semantic[:, :, :length]], dim=1)
    embeddings = codec.fc(embeddings.transpose(1, 2)).transpose(1, 2)
    return codec.quantizer.encode(embeddings, codec.config.target_bandwidths[-1]).transpose(0, 1)


def _in_windows(stack, window: int):
    """`stack` ([B, 1, samples] -> [B, hidden, frames]) computed in windows of `window` samples."""
    reach = Reach.of(stack)
    return lambda audio: in_windows(stack, reach, audio, window)
