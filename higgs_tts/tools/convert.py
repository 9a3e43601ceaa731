"""Convert the legacy Higgs Audio V2 release to the native layout `checkpoint.py` loads.

The legacy release is the one the old `boson_multimodal` package loads: a model folder with
`model_type` 'higgs_audio' (bosonai/higgs-audio-v2-generation-3B-base at revision 10840182...)
and an audio tokenizer folder holding `config.json` + `model.pth` (bosonai/higgs-audio-v2-tokenizer
at revision 9d4988fb...). The key mappings follow transformers' own conversion scripts
(convert_higgs_audio_v2_to_hf.py, convert_higgs_audio_v2_tokenizer_to_hf.py) and boson_multimodal's
module layout; every converted key and shape is checked against the native classes before
anything is written.

Nothing is downloaded. Each output is written to a hidden temporary folder next to its
destination and renamed into place only once both conversions have succeeded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from ..core.checkpoint import NATIVE_CODEC_TYPE, NATIVE_MODEL_TYPE, CheckpointError, layout
from ..settings import DEFAULT_TOKENIZER
from .chat_template import CHAT_TEMPLATE

log = logging.getLogger(__name__)

LEGACY_CODEC_REVISION = "9d4988fbd4ad07b4cac3a5fa462741a41810dbec"
NATIVE_CODEC_REPOS = ("bosonai/higgs-audio-v2-tokenizer (main)", "eustlb/higgs-audio-v2-tokenizer")

# Native generation defaults (docs/model-facts.md, section 3): RAS window 7, max repeats 2, eos 128009, pad 128001.
GENERATION_DEFAULTS = {"bos_token_id": 1, "eos_token_id": 128009, "pad_token_id": 128001,
                       "ras_win_len": 7, "ras_win_max_num_repeat": 2}
AUDIO_DELAY_TOKEN = "<|reserved_special_token_6|>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json")


# ---------------------------------------------------------------------------------------------
# Layout detection
# ---------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent} has no {path.name}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# Generation model
# ---------------------------------------------------------------------------------------------

# The release uses every one of these; other values change the architecture the native class implements.
_REQUIRED_LEGACY_SETTINGS = {
    "audio_adapter_type": "dual_ffn_fast_forward",
    "use_delay_pattern": True,
}
_ABSENT_LEGACY_FEATURES = ("use_audio_out_self_attention", "use_audio_out_embed_projector", "use_rq_transformer",
                           "audio_decoder_proj_num_layers")


def native_model_config(legacy: dict):
    """The `HiggsAudioV2Config` for a legacy `higgs_audio` config.json."""
    from transformers import HiggsAudioV2Config

    text = legacy.get("text_config")
    if not isinstance(text, dict):
        raise CheckpointError("legacy config.json has no text_config")
    problems = [f"{key}={legacy.get(key)!r} (expected {value!r})"
                for key, value in _REQUIRED_LEGACY_SETTINGS.items() if legacy.get(key, value) != value]
    problems += [f"{key}={legacy[key]!r}" for key in _ABSENT_LEGACY_FEATURES if legacy.get(key)]
    layers = text["num_hidden_layers"]
    dual = legacy.get("audio_dual_ffn_layers")
    if dual is not None and sorted(dual) != list(range(layers)):
        problems.append(f"audio_dual_ffn_layers={dual} (the native model has the audio FFN in all {layers} layers)")
    for key, text_key in (("audio_ffn_hidden_size", "hidden_size"), ("audio_ffn_intermediate_size",
                                                                     "intermediate_size")):
        if legacy.get(key) not in (None, text[text_key]):
            problems.append(f"{key}={legacy[key]} differs from text_config.{text_key}={text[text_key]}")
    if problems:
        raise CheckpointError("the legacy model uses features the native HiggsAudioV2 model does not have: "
                              + "; ".join(problems))

    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {"rope_type": "default"})
    rope.setdefault("rope_theta", text.get("rope_theta", 500000.0))
    if "type" in rope:  # pre-4.45 spelling of rope_type
        rope.setdefault("rope_type", rope.pop("type"))
    fields = {key: text[key] for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
        "pretraining_tp", "attention_bias", "attention_dropout", "mlp_bias", "head_dim",
    ) if text.get(key) is not None}
    # The legacy embedding/head rows per codebook are the codes plus the stream BOS and EOS ids.
    codebook_size = legacy["audio_codebook_size"] + 2
    config = HiggsAudioV2Config(
        **fields,
        rope_parameters=rope,
        num_codebooks=legacy["audio_num_codebooks"],
        codebook_size=codebook_size,
        audio_token_id=legacy.get("audio_out_token_idx", 128016),
        audio_bos_token_id=legacy.get("audio_out_bos_token_id", 128013),
        audio_stream_bos_id=legacy.get("audio_stream_bos_id", 1024),
        audio_stream_eos_id=legacy.get("audio_stream_eos_id", 1025),
        pad_token_id=legacy.get("pad_token_id", GENERATION_DEFAULTS["pad_token_id"]),
        tie_word_embeddings=False,
    )
    config.architectures = ["HiggsAudioV2ForConditionalGeneration"]
    dtype = legacy.get("torch_dtype") or legacy.get("dtype") or text.get("torch_dtype")
    if dtype:
        config.dtype = dtype
    return config


_DROPPED_MODEL_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq", "audio_codebook_weights")
_SPLIT_HALF = re.compile(r"^(?P<base>.+)\.(?:embedding|linear)_(?P<half>frozen|trainable)\.weight$")
_MODEL_RENAMES = (
    (re.compile(r"^audio_codebook_embeddings\."), "model.embed_audio_tokens.embed_audio_tokens."),
    (re.compile(r"^(embed_tokens|layers|norm)\."), r"model.\1."),
    (re.compile(r"^audio_decoder_proj\."), ""),
)


def native_model_key(legacy_key: str) -> tuple[str, int] | None:
    """(native key, part) for one legacy tensor; part orders split halves (frozen 0, trainable 1).

    None for tensors the native model does not keep (rotary caches, codebook loss weights).
    """
    if legacy_key.endswith(_DROPPED_MODEL_SUFFIXES):
        return None
    part = 0
    split = _SPLIT_HALF.match(legacy_key)
    if split:
        legacy_key, part = split["base"] + ".weight", 0 if split["half"] == "frozen" else 1
    for pattern, replacement in _MODEL_RENAMES:
        legacy_key = pattern.sub(replacement, legacy_key)
    return legacy_key, part


def _expected_state(model_class, config, **kwargs) -> dict[str, torch.Size]:
    """Key -> shape of the native model, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = model_class(config, **kwargs)
    return {key: value.shape for key, value in model.state_dict().items()}


def _model_shards(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map") or {}
        names = list(dict.fromkeys(weight_map.values()))
    else:
        names = sorted(path.name for path in src.glob("*.safetensors"))
    if not names:
        raise CheckpointError(f"{src} has no *.safetensors weights")
    missing = [name for name in names if not (src / name).is_file()]
    if missing:
        raise CheckpointError(f"{src} is incomplete: missing weight file(s) {', '.join(missing)}")
    return [src / name for name in names]


def _plan_model(src: Path, handles: list, config) -> tuple[list[list[str]], dict[str, list[tuple[object, str]]]]:
    """Group the legacy tensors by native key and check names and shapes against the native model.

    `handles` are the open shards. Returns the native keys per output shard (one per legacy shard)
    and, for each native key, its sources as (handle, legacy key) in concatenation order.
    """
    from transformers import HiggsAudioV2ForConditionalGeneration

    sources: dict[str, list[tuple[int, int, str]]] = {}
    for shard_index, handle in enumerate(handles):
        for legacy_key in handle.keys():
            mapped = native_model_key(legacy_key)
            if mapped is None:
                continue
            native_key, part = mapped
            sources.setdefault(native_key, []).append((part, shard_index, legacy_key))
    log.info("%s: %d tensors in %d shard(s)", src, sum(len(s) for s in sources.values()), len(handles))

    # The text head is optional in the native class (ignored at load time), so check against the variant with it.
    expected = _expected_state(HiggsAudioV2ForConditionalGeneration, config, use_text_head=True)
    optional = {"text_lm_head.weight"}
    problems = []
    unexpected = sorted(set(sources) - set(expected))
    if unexpected:
        problems.append(f"tensors the native model does not have: {', '.join(unexpected[:8])}"
                        + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
    missing = sorted(set(expected) - set(sources) - optional)
    if missing:
        problems.append(f"tensors missing for the native model: {', '.join(missing[:8])}"
                        + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    for native_key, parts in sources.items():
        parts.sort()
        if len(parts) > 1 and [p for p, _, _ in parts] != [0, 1]:
            problems.append(f"{native_key}: expected one tensor or a frozen+trainable pair, got "
                            f"{[key for _, _, key in parts]}")
            continue
        shapes = [list(handles[shard].get_slice(key).get_shape()) for _, shard, key in parts]
        if any(shape[1:] != shapes[0][1:] for shape in shapes):
            problems.append(f"{native_key}: halves of different widths {shapes}")
            continue
        shape = [sum(s[0] for s in shapes), *shapes[0][1:]]
        if native_key in expected and list(expected[native_key]) != shape:
            problems.append(f"{native_key}: shape {shape}, the native model needs {list(expected[native_key])}")
    if problems:
        raise CheckpointError(f"{src} does not map onto the native model: " + "; ".join(problems))

    per_shard: list[list[str]] = [[] for _ in handles]
    for native_key, parts in sources.items():
        per_shard[parts[0][1]].append(native_key)  # written with the shard holding its first part
    plan = {key: [(handles[shard], legacy) for _, shard, legacy in parts] for key, parts in sources.items()}
    return per_shard, plan


def _write_model_weights(src: Path, out: Path, config) -> int:
    from safetensors import safe_open
    from safetensors.torch import save_file

    shards = _model_shards(src)
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(path), framework="pt", device="cpu")) for path in shards]
        per_shard, plan = _plan_model(src, handles, config)
        per_shard = [keys for keys in per_shard if keys]
        names = (["model.safetensors"] if len(per_shard) == 1 else
                 [f"model-{i + 1:05d}-of-{len(per_shard):05d}.safetensors" for i in range(len(per_shard))])
        weight_map, total_bytes = {}, 0
        for name, keys in zip(names, per_shard, strict=True):
            # One output shard in memory at a time; safe_open reads each tensor from its mmap on demand.
            tensors = {}
            for key in sorted(keys):
                parts = [handle.get_tensor(legacy_key) for handle, legacy_key in plan[key]]
                tensors[key] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
                weight_map[key] = name
                total_bytes += tensors[key].numel() * tensors[key].element_size()
            save_file(tensors, str(out / name), metadata={"format": "pt"})
            log.info("wrote %s (%d tensors)", name, len(tensors))
            del tensors
    if len(names) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return len(weight_map)


def _copy_tokenizer(src: Path, out: Path) -> None:
    present = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if "tokenizer_config.json" not in present or not {"tokenizer.json", "tokenizer.model"} & set(present):
        raise CheckpointError(f"{src} has no text tokenizer (tokenizer.json + tokenizer_config.json)")
    for name in present:
        shutil.copy2(src / name, out / name)
    # The legacy tokenizer has no pad token; the native release pads with its eos (<|end_of_text|>, id 128001).
    config_file = out / "tokenizer_config.json"
    config = _read_json(config_file)
    if not config.get("pad_token") and config.get("eos_token"):
        config["pad_token"] = config["eos_token"]
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _processor_config(legacy: dict, codec_reference: str) -> dict:
    return {
        "audio_bos_token": legacy.get("audio_out_bos_token", "<|audio_out_bos|>"),
        "audio_delay_token": AUDIO_DELAY_TOKEN,
        "audio_eos_token": legacy.get("audio_eos_token", "<|audio_eos|>"),
        "audio_stream_bos_id": legacy.get("audio_stream_bos_id", 1024),
        "audio_stream_eos_id": legacy.get("audio_stream_eos_id", 1025),
        "audio_token": legacy.get("audio_out_token", "<|AUDIO_OUT|>"),
        "audio_tokenizer": {"audio_tokenizer_class": "HiggsAudioV2TokenizerModel",
                            "audio_tokenizer_name_or_path": codec_reference},
        "feature_extractor": {"feature_extractor_type": "DacFeatureExtractor", "feature_size": 1, "hop_length": 1,
                              "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
                              "sampling_rate": 24000},
        "processor_class": "HiggsAudioV2Processor",
    }


def _check_tokenizer_ids(out: Path, config, processor: dict) -> None:
    """The copied tokenizer must give the audio tokens the ids the converted config uses."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    wanted = {processor["audio_token"]: config.audio_token_id, processor["audio_bos_token"]: config.audio_bos_token_id,
              processor["audio_delay_token"]: config.audio_delay_token_id}
    wrong = {token: (tokenizer.convert_tokens_to_ids(token), token_id) for token, token_id in wanted.items()
             if tokenizer.convert_tokens_to_ids(token) != token_id}
    if tokenizer.pad_token_id != config.pad_token_id:
        wrong["pad"] = (tokenizer.pad_token_id, config.pad_token_id)
    if wrong:
        raise CheckpointError("the text tokenizer does not match the model config (token: (tokenizer id, config id)): "
                              + ", ".join(f"{k} {v}" for k, v in wrong.items()))


def convert_model(src: Path, out: Path, codec_reference: str = DEFAULT_TOKENIZER) -> str:
    """Write the native form of the legacy model folder `src` into the existing empty folder `out`."""
    from transformers import GenerationConfig

    legacy = _read_json(src / "config.json")
    config = native_model_config(legacy)
    _model_shards(src)  # weight files present, before anything is written
    config.save_pretrained(out)
    GenerationConfig(**GENERATION_DEFAULTS).save_pretrained(out)
    # The small files first, so a tokenizer problem shows before gigabytes of weights are copied.
    _copy_tokenizer(src, out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    processor = _processor_config(legacy, codec_reference)
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    _check_tokenizer_ids(out, config, processor)
    count = _write_model_weights(src, out, config)
    return f"{count} tensors, {config.num_hidden_layers} layers, hidden {config.hidden_size}"


# ---------------------------------------------------------------------------------------------
# Audio tokenizer (codec)
# ---------------------------------------------------------------------------------------------

def native_codec_config(legacy: dict):
    """The `HiggsAudioV2TokenizerConfig` for the legacy HiggsAudioTokenizer arguments in config.json."""
    from transformers import HiggsAudioV2TokenizerConfig

    missing = [key for key in ("ratios", "D", "n_q", "bins", "sample_rate") if key not in legacy]
    if missing:
        raise CheckpointError(f"legacy audio tokenizer config.json lacks {', '.join(missing)}")
    problems = []
    if not isinstance(legacy["bins"], int):
        problems.append(f"bins={legacy['bins']!r} (residual FSQ; the native codec is residual VQ)")
    # Both converters in transformers map only this semantic teacher (a HuBERT-base, default HubertConfig).
    if legacy.get("semantic_techer", "hubert_base_general") != "hubert_base_general":
        problems.append(f"semantic_techer={legacy['semantic_techer']!r}")
    if legacy.get("vq_scale", 1) != 1:
        problems.append(f"vq_scale={legacy['vq_scale']!r}")
    if legacy.get("downsample_mode", "step_down") != "step_down":
        problems.append(f"downsample_mode={legacy['downsample_mode']!r}")
    if legacy.get("semantic_sample_rate") not in (None, 16000):
        problems.append(f"semantic_sample_rate={legacy['semantic_sample_rate']!r}")
    if problems:
        raise CheckpointError("the legacy audio tokenizer uses options the native codec does not have: "
                              + "; ".join(problems))

    ratios, n_q, bins, rate = list(legacy["ratios"]), legacy["n_q"], legacy["bins"], legacy["sample_rate"]
    # Native picks its quantizer count from the last target bandwidth; the legacy list goes past n_q
    # (0.5..4 kbps = 16 quantizers at 25 Hz x 10 bits) although only n_q were trained.
    bits_per_frame = math.ceil(rate / math.prod(ratios)) * math.ceil(math.log2(bins))
    bandwidths = [b for b in legacy.get("target_bandwidths", []) if int(1000 * b // bits_per_frame) <= n_q]
    if not bandwidths or int(1000 * bandwidths[-1] // bits_per_frame) != n_q:
        bandwidths.append(n_q * bits_per_frame / 1000)
    config = HiggsAudioV2TokenizerConfig(
        # The legacy DAC encoder starts at 64 channels and its decoder at 1024 (fixed in boson_multimodal).
        acoustic_model_config={"encoder_hidden_size": 64, "downsampling_ratios": ratios, "decoder_hidden_size": 1024,
                               "upsampling_ratios": ratios, "hidden_size": legacy["D"], "sampling_rate": rate},
        semantic_model_config={"mask_time_prob": 0.0},
        target_bandwidths=bandwidths,
        codebook_size=bins,
        codebook_dim=legacy.get("codebook_dim") or 64,
        sample_rate=rate,
    )
    config.architectures = ["HiggsAudioV2TokenizerModel"]
    if config.num_quantizers != n_q:
        raise CheckpointError(f"converted codec config gives {config.num_quantizers} quantizers, expected {n_q}")
    return config


_RES_UNIT_LAYERS = ("snake1", "conv1", "snake2", "conv2")


def _sequential_end(prefix: str, index: int, last: int) -> str | None:
    """The layers around the blocks of a legacy Sequential: conv (0), snake (n + 1), conv (n + 2)."""
    return {0: f"{prefix}.conv1", last: f"{prefix}.snake1", last + 1: f"{prefix}.conv2"}.get(index)


def native_codec_key(key: str, num_blocks: int) -> str:
    """The native name of a legacy codec tensor (weight-norm suffixes kept); unknown names pass unchanged."""
    last = num_blocks + 1  # legacy Sequential: conv, blocks 1..n, snake, conv
    if m := re.match(r"encoder\.block\.(\d+)\.(.+)$", key):
        index, rest = int(m[1]), m[2]
        if end := _sequential_end("acoustic_encoder", index, last):
            return f"{end}.{rest}"
        block = f"acoustic_encoder.block.{index - 1}"
        if m := re.match(r"block\.([012])\.block\.([0-3])\.(.+)$", rest):
            return f"{block}.res_unit{int(m[1]) + 1}.{_RES_UNIT_LAYERS[int(m[2])]}.{m[3]}"
        if m := re.match(r"block\.([34])\.(.+)$", rest):
            return f"{block}.{'snake1' if m[1] == '3' else 'conv1'}.{m[2]}"
    if m := re.match(r"decoder_2\.model\.(\d+)\.(.+)$", key):
        index, rest = int(m[1]), m[2]
        if end := _sequential_end("acoustic_decoder", index, last):
            return f"{end}.{rest}"
        block = f"acoustic_decoder.block.{index - 1}"
        if m := re.match(r"block\.([01])\.(.+)$", rest):
            return f"{block}.{'snake1' if m[1] == '0' else 'conv_t1'}.{m[2]}"
        if m := re.match(r"block\.([234])\.block\.([0-3])\.(.+)$", rest):
            return f"{block}.res_unit{int(m[1]) - 1}.{_RES_UNIT_LAYERS[int(m[2])]}.{m[3]}"
    if m := re.match(r"quantizer\.vq\.layers\.(\d+)\.(.+)$", key):
        return f"quantizer.quantizers.{m[1]}.{m[2].replace('_codebook.', 'codebook.')}"
    for old, new in (("fc_prior.", "fc."), ("fc_post1.", "fc1."), ("fc_post2.", "fc2.")):
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith(("encoder_semantic.", "decoder_semantic.")):
        # boson_multimodal wraps these nn.Conv1d in a module with a `.conv` child; native does not.
        for wrapped in ("conv", "conv1", "conv2"):
            key = key.replace(f".{wrapped}.conv.", f".{wrapped}.")
    return key


def _fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weight = g * v / ||v||, the norm taken over the axes where g has size 1 (torch's weight_norm)."""
    if g.dim() not in (0, v.dim()):
        raise CheckpointError(f"weight_g of shape {list(g.shape)} does not match weight_v of shape {list(v.shape)}")
    dims = [d for d in range(v.dim()) if g.dim() == 0 or g.shape[d] == 1]
    v32 = v.float()
    return (v32 * (g.float() / torch.linalg.vector_norm(v32, dim=dims, keepdim=True))).to(v.dtype)


# HuBERT's SpecAugment vector only acts while training; native builds HuBERT with mask_time_prob=0 and has none.
_DROPPED_CODEC_KEYS = ("semantic_model.masked_spec_embed",)


def convert_codec_state_dict(legacy: dict[str, torch.Tensor], expected: dict[str, torch.Size],
                             num_blocks: int) -> dict[str, torch.Tensor]:
    """Rename and fold the legacy codec tensors into exactly the native keys and shapes in `expected`."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, tensor in legacy.items():
        native = native_codec_key(key, num_blocks)
        if native.endswith((".weight_g", ".weight_v")):
            pairs.setdefault(native[: -len(".weight_g")], {})[native[-1]] = tensor
        elif native in expected:
            out[native] = tensor
        elif key not in _DROPPED_CODEC_KEYS:
            unexpected.append(key)
    for base, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            unexpected.append(f"{base}.weight_{''.join(pair)} (no partner)")
        elif f"{base}.weight" in expected:
            out[f"{base}.weight"] = _fold_weight_norm(pair["g"], pair["v"])
        elif f"{base}.parametrizations.weight.original0" in expected:
            # Native keeps this weight norm (HuBERT's positional conv) as a parametrization: g, v as they are.
            out[f"{base}.parametrizations.weight.original0"] = pair["g"]
            out[f"{base}.parametrizations.weight.original1"] = pair["v"]
        else:
            unexpected.append(f"{base}.weight_g/_v")
    problems = []
    if unexpected:
        problems.append(f"tensors the native codec does not have: {', '.join(sorted(unexpected)[:8])}")
    missing = sorted(set(expected) - set(out))
    if missing:
        problems.append(f"tensors missing for the native codec: {', '.join(missing[:8])}"
                        + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    problems += [f"{key}: shape {list(out[key].shape)}, the native codec needs {list(shape)}"
                 for key, shape in expected.items() if key in out and out[key].shape != shape]
    if problems:
        raise CheckpointError("the legacy audio tokenizer does not map onto the native codec: " + "; ".join(problems))
    return out


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no model.pth (the legacy audio tokenizer weights)")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # mmap needs the zip format of torch.save; older files are read whole
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refuses anything but tensors and plain containers
        raise CheckpointError(f"{path} is not a plain state dict of tensors: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a plain state dict of tensors")
    return state


def convert_codec(src: Path, out: Path) -> str:
    """Write the native form of the legacy audio tokenizer folder `src` into the existing empty folder `out`."""
    from safetensors.torch import save_file
    from transformers import DacFeatureExtractor, HiggsAudioV2TokenizerModel

    config = native_codec_config(_read_json(src / "config.json"))
    expected = _expected_state(HiggsAudioV2TokenizerModel, config)
    state = convert_codec_state_dict(_load_pth(src / "model.pth"), expected, len(config.acoustic_model_config
                                                                                   .downsampling_ratios))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    config.save_pretrained(out)
    DacFeatureExtractor(feature_size=1, hop_length=config.hop_length, padding_side="right", padding_value=0.0,
                        return_attention_mask=True, sampling_rate=config.sample_rate).save_pretrained(out)
    # Loading it back through transformers proves the folder is complete before it is published.
    _, info = HiggsAudioV2TokenizerModel.from_pretrained(out, output_loading_info=True)
    leftovers = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if leftovers:
        raise CheckpointError(f"the converted audio tokenizer does not load cleanly: {leftovers}")
    return f"{len(state)} tensors, {config.num_quantizers} quantizers, hop {config.hop_length}"


# ---------------------------------------------------------------------------------------------
# Both, atomically
# ---------------------------------------------------------------------------------------------

def _publish(tmp: Path, dst: Path) -> None:
    """Rename the staged folder into place with the permissions a plain mkdir/write would have given."""
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp.rglob("*"):  # mkdtemp makes 0700 and safetensors writes 0600
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    tmp.chmod(0o777 & ~umask)
    tmp.rename(dst)


@contextmanager
def _staging(dst: Path) -> Iterator[Path]:
    """A temporary folder beside `dst` (same file system, so the final rename is atomic); removed on failure."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_destination(dst: Path, src: Path) -> None:
    if dst.exists() or dst.is_symlink():
        raise CheckpointError(f"{dst} already exists; choose a new folder (nothing was written)")
    if dst.resolve().is_relative_to(src.resolve()):
        raise CheckpointError(f"{dst} is inside the source folder {src}")


def convert_checkpoint(src: str | Path, dst: str | Path, tokenizer_src: str | Path | None = None,
                       tokenizer_dst: str | Path | None = None,
                       say: Callable[[str], None] = print) -> bool:
    """Convert the legacy model (and, when given, the legacy audio tokenizer); True if anything was written."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    jobs: list[tuple[str, Path, Path, Callable[[Path], str]]] = []

    if layout(src, "model") == "native":
        say(f"{src} is already native (model_type '{NATIVE_MODEL_TYPE}'); nothing to convert")
    else:
        _check_destination(dst, src)
        codec_reference = (os.path.relpath(Path(tokenizer_dst).expanduser().absolute(), dst.absolute())
                           if tokenizer_dst else DEFAULT_TOKENIZER)
        jobs.append(("model", src, dst, lambda out: convert_model(src, out, codec_reference)))
        if tokenizer_src is None:
            say(f"note: the legacy audio tokenizer (config.json + model.pth, revision {LEGACY_CODEC_REVISION[:8]}) "
                f"needs converting too: pass --tokenizer-src/--tokenizer-dst, or use the native "
                f"{' or '.join(NATIVE_CODEC_REPOS)}")

    if tokenizer_src is not None:
        if tokenizer_dst is None:
            raise CheckpointError("--tokenizer-src needs --tokenizer-dst")
        codec_src, codec_dst = Path(tokenizer_src).expanduser(), Path(tokenizer_dst).expanduser()
        if layout(codec_src, "codec") == "native":
            say(f"{codec_src} is already native (model_type '{NATIVE_CODEC_TYPE}'); nothing to convert")
        else:
            _check_destination(codec_dst, codec_src)
            model_out, codec_out = dst.absolute(), codec_dst.absolute()
            if jobs and (model_out.is_relative_to(codec_out) or codec_out.is_relative_to(model_out)):
                raise CheckpointError("the model and the audio tokenizer need separate output folders, "
                                      "neither inside the other (siblings such as OUT/model and OUT/audio_tokenizer)")
            jobs.append(("audio tokenizer", codec_src, codec_dst, lambda out: convert_codec(codec_src, out)))

    with ExitStack() as stack:
        staged = []
        for name, job_src, job_dst, run in jobs:
            out = stack.enter_context(_staging(job_dst))
            say(f"converting the {name}: {job_src} -> {job_dst}")
            staged.append((name, out, job_dst, run(out)))
        # Published only after every conversion succeeded, each with one rename.
        for name, out, job_dst, summary in staged:
            _publish(out, job_dst)
            say(f"wrote the native {name} to {job_dst} ({summary})")
    return bool(jobs)
