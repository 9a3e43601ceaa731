"""Codec codes of a reference clip, computed as upstream's audio tokenizer computes them.

Upstream (`boson_multimodal/audio_processing/higgs_audio_tokenizer.py`, `_xcodec_encode`): when the
acoustic and semantic feature lengths differ, the acoustic encoder reads the audio padded by
160 * semantic_downsample_factor samples on each side (320 at 24 kHz / 16 kHz), and the longer of
the two feature streams is trimmed to the shorter. transformers' port pads hop // 2 (480) and never
trims, so for some clip lengths its codes are shifted by 160 samples. The layers are the port's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ENCODING = "upstream-pad-trim"  # part of the code cache key: codes made otherwise are not reused


def encode_clip(codec, input_values: torch.Tensor) -> torch.Tensor:
    """Codes `[B, num_quantizers, T]` of `[B, 1, samples]` audio at the codec's sample rate."""
    if input_values.shape[1] != 1:
        raise ValueError(f"audio must be mono, but got {input_values.shape[1]} channels")
    semantic = codec.encoder_semantic(codec._extract_semantic_features(input_values).detach().transpose(1, 2))
    acoustic = codec.acoustic_encoder(input_values)
    if acoustic.shape[2] != semantic.shape[2]:
        pad = 160 * codec.config.semantic_downsample_factor
        acoustic = codec.acoustic_encoder(F.pad(input_values, (pad, pad)))
    length = min(acoustic.shape[2], semantic.shape[2])
    embeddings = torch.cat([acoustic[:, :, :length].to(semantic.device), semantic[:, :, :length]], dim=1)
    embeddings = codec.fc(embeddings.transpose(1, 2)).transpose(1, 2)
    return codec.quantizer.encode(embeddings, codec.config.target_bandwidths[-1]).transpose(0, 1)
