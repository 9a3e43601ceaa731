"""Write a tiny random Higgs Audio V2 checkpoint in the native layout.

It speaks noise, but it has the real token ids, the real audio geometry (24 kHz, 960 samples
per frame, 8 codebooks of 1024 + stream BOS/EOS) and is saved with transformers' own
`save_pretrained`, so it loads through exactly the code path a downloaded checkpoint takes.
Tests and smoke runs use it because no machine here can download the real weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .chat_template import CHAT_TEMPLATE

# Llama-3 special tokens with the ids Higgs Audio V2 uses (docs/model-facts.md, section 2).
SPECIAL_TOKENS = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
    128011: "<|audio_bos|>",
    128012: "<|audio_eos|>",
    128013: "<|audio_out_bos|>",
    128014: "<|reserved_special_token_6|>",
    128015: "<|AUDIO|>",
    128016: "<|AUDIO_OUT|>",
    128017: "<|recipient|>",
    128018: "<|scene_desc_start|>",
    128019: "<|scene_desc_end|>",
    # Sound-effect tags the transcript normalization writes (docs/model-facts.md, section 4).
    128022: "<SE>",
    128023: "</SE>",
    128024: "<SE_s>",
    128025: "</SE_s>",
    128026: "<SE_e>",
    128027: "</SE_e>",
}
VOCAB_SIZE = 128256
FIRST_SPECIAL_ID = 128000

def _text_tokenizer():
    """A byte-level BPE tokenizer whose special tokens sit at Llama-3's ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    # Unreachable filler entries push the special tokens to their real ids.
    for i in range(len(vocab), FIRST_SPECIAL_ID):
        vocab[f"<|filler_{i}|>"] = i
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()

    specials = [SPECIAL_TOKENS.get(i, f"<|reserved_special_token_{i}|>") for i in range(FIRST_SPECIAL_ID, VOCAB_SIZE)]
    backend.add_special_tokens(specials)
    for token_id, token in SPECIAL_TOKENS.items():
        assert backend.token_to_id(token) == token_id, (token, backend.token_to_id(token))

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",  # as the real checkpoint; generation stops on <|eot_id|>
        pad_token="<|end_of_text|>",
        model_max_length=131072,
    )


def _audio_tokenizer(seed: int):
    """The codec with its real geometry (hop 960 at 24 kHz, 8 quantizers) and tiny widths."""
    import torch
    from transformers import DacConfig, HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel, HubertConfig

    acoustic = DacConfig(
        encoder_hidden_size=4,
        downsampling_ratios=[8, 5, 4, 2, 3],
        decoder_hidden_size=32,
        upsampling_ratios=[8, 5, 4, 2, 3],
        hidden_size=16,
        codebook_size=1024,
        sampling_rate=24000,
    )
    semantic = HubertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8, 8, 8, 8, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        mask_time_prob=0.0,
    )
    config = HiggsAudioV2TokenizerConfig(
        acoustic_model_config=acoustic.to_dict(),
        semantic_model_config=semantic.to_dict(),
        target_bandwidths=[0.5, 1, 1.5, 2],
        codebook_size=1024,
        codebook_dim=8,
        sample_rate=24000,
    )
    torch.manual_seed(seed)
    model = HiggsAudioV2TokenizerModel(config).eval()
    # Codebooks start as zeros; random ones make the codes depend on the audio, as real ones do.
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("codebook.embed"):
                buffer.copy_(torch.randn_like(buffer))
    assert model.config.num_quantizers == 8 and model.config.hop_length == 960
    return model


def _generation_model(seed: int):
    import torch
    from transformers import GenerationConfig, HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration

    config = HiggsAudioV2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=8192,
        num_codebooks=8,
        codebook_size=1026,
    )
    torch.manual_seed(seed)
    model = HiggsAudioV2ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=1,
        eos_token_id=128009,
        pad_token_id=128001,
        ras_win_len=7,
        ras_win_max_num_repeat=2,
    )
    return model


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `out_dir/model` and `out_dir/audio_tokenizer`; return both paths."""
    from transformers import DacFeatureExtractor, HiggsAudioV2Processor

    out_dir = Path(out_dir)
    model_dir, codec_dir = out_dir / "model", out_dir / "audio_tokenizer"

    codec = _audio_tokenizer(seed)
    codec.save_pretrained(codec_dir)

    model = _generation_model(seed)
    model.save_pretrained(model_dir)

    feature_extractor = DacFeatureExtractor(
        feature_size=1, hop_length=1, padding_side="right", padding_value=0.0, sampling_rate=24000
    )
    processor = HiggsAudioV2Processor(
        feature_extractor=feature_extractor,
        tokenizer=_text_tokenizer(),
        audio_tokenizer=codec,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(model_dir)
    # The saved processor points at the codec by path; make it the portable relative form the
    # loader ignores anyway (TOKENIZER_PATH decides which codec is used).
    config_file = model_dir / "processor_config.json"
    if config_file.exists():
        data = json.loads(config_file.read_text())
        if isinstance(data.get("audio_tokenizer"), dict):
            data["audio_tokenizer"]["audio_tokenizer_name_or_path"] = "../audio_tokenizer"
            config_file.write_text(json.dumps(data, indent=2) + "\n")
    return model_dir, codec_dir


def full_size_codec_config():
    """The real codec's configuration (`bosonai/higgs-audio-v2-tokenizer`): transformers' defaults (a DAC
    acoustic encoder of width 64, HuBERT-base with its GroupNorm feature encoder) with the real down-sampling
    ratios (hop 960) and 8 quantizers."""
    from transformers import HiggsAudioV2TokenizerConfig

    return HiggsAudioV2TokenizerConfig(
        acoustic_model_config={"downsampling_ratios": [8, 5, 4, 2, 3], "upsampling_ratios": [8, 5, 4, 2, 3]},
        target_bandwidths=[0.5, 1, 1.5, 2],
    )


def full_size_random_model(device: str | None = None, dtype: str | None = None):
    """The real model and codec shapes with random weights, built in memory on the device.

    For benchmarks without a download: speed depends on the shapes, not on the weights' values.
    """
    import torch
    from transformers import (
        DacFeatureExtractor,
        HiggsAudioV2Config,
        HiggsAudioV2ForConditionalGeneration,
        HiggsAudioV2Processor,
        HiggsAudioV2TokenizerModel,
    )

    from ..core.checkpoint import LoadedModel, pick_device, pick_dtype

    target = pick_device(device)
    weights_dtype = pick_dtype(dtype, target)
    started = time.perf_counter()
    with torch.device(target):
        model = HiggsAudioV2ForConditionalGeneration._from_config(
            HiggsAudioV2Config(codebook_size=1026), dtype=weights_dtype
        ).eval()
        codec = HiggsAudioV2TokenizerModel(full_size_codec_config()).eval()
    assert codec.config.num_quantizers == 8 and codec.config.hop_length == 960
    feature_extractor = DacFeatureExtractor(feature_size=1, hop_length=1, padding_side="right", sampling_rate=24000)
    processor = HiggsAudioV2Processor(feature_extractor=feature_extractor, tokenizer=_text_tokenizer(),
                                      audio_tokenizer=codec, chat_template=CHAT_TEMPLATE)
    return LoadedModel(model=model, processor=processor, device=target, dtype=weights_dtype,
                       model_path="random weights (full size)", load_seconds=time.perf_counter() - started)
