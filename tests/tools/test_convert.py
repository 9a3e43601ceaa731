"""`higgs-tts convert-checkpoint`: legacy (boson_multimodal) checkpoints in, native ones out.

No legacy checkpoint can be downloaded here, so the legacy folders are built from native weights
by the inverse of the documented mapping, written the way the legacy release stores them (split
embedding halves, weight-normed codec convs, boson_multimodal's module names). The conversion then
runs as a real process and the result is loaded by the project's own loader.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from higgs_tts.cli import main
from higgs_tts.core.checkpoint import load_model
from higgs_tts.tools.convert import native_codec_config, native_model_config, native_model_key

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

REPO = Path(__file__).resolve().parents[2]

# The legacy release's config.json (bosonai/higgs-audio-v2-generation-3B-base @ 10840182), the fields that matter.
REAL_LEGACY_MODEL_CONFIG = {
    "model_type": "higgs_audio",
    "audio_adapter_type": "dual_ffn_fast_forward",
    "audio_codebook_size": 1024,
    "audio_decoder_proj_num_layers": 0,
    "audio_dual_ffn_layers": list(range(28)),
    "audio_eos_token_id": 128012,
    "audio_ffn_hidden_size": 3072,
    "audio_ffn_intermediate_size": 8192,
    "audio_num_codebooks": 8,
    "audio_out_bos_token_id": 128013,
    "audio_out_token_idx": 128016,
    "audio_stream_bos_id": 1024,
    "audio_stream_eos_id": 1025,
    "pad_token_id": 128001,
    "skip_audio_tower": True,
    "torch_dtype": "bfloat16",
    "use_audio_out_embed_projector": False,
    "use_audio_out_self_attention": 0,
    "use_delay_pattern": True,
    "use_rq_transformer": False,
    "text_config": {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
        "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1,
        "initializer_range": 0.02, "tie_word_embeddings": True,
    },
}
# Its weight index: these per-layer names, four top-level tensors (397 in all).
REAL_LAYER_TENSORS = (
    "audio_input_layernorm", "audio_mlp.down_proj", "audio_mlp.gate_proj", "audio_mlp.up_proj",
    "audio_post_attention_layernorm", "input_layernorm", "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
    "post_attention_layernorm", "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj",
)
REAL_TOP_TENSORS = ("audio_codebook_embeddings.weight", "audio_decoder_proj.audio_lm_head.weight",
                    "audio_decoder_proj.text_lm_head.weight", "embed_tokens.weight", "norm.weight")
# Parameter counts per top-level module of the legacy model, as published for the real weights.
REAL_MODEL_PARAMS = {"embed_tokens": 394002432, "layers": 4932845568, "norm": 3072,
                     "audio_decoder_proj": 419217408, "audio_codebook_embeddings": 25214976}

# The legacy audio tokenizer's config.json (bosonai/higgs-audio-v2-tokenizer @ 9d4988fb), verbatim.
REAL_LEGACY_CODEC_CONFIG = {"n_filters": 32, "D": 256, "codebook_dim": 64, "target_bandwidths": [0.5, 1, 1.5, 2, 4],
                            "ratios": [8, 5, 4, 2, 3], "sample_rate": 24000, "bins": 1024, "n_q": 8,
                            "semantic_techer": "hubert_base_general"}
# Numbers of values per top-level key of its model.pth (201,426,474 in all), as published for the real file.
REAL_CODEC_PARAMS = {"encoder": 51330688, "decoder_2": 20247074, "semantic_model": 94371712,
                     "encoder_semantic": 14747136, "decoder_semantic": 16516608, "quantizer": 2114056,
                     "fc_prior": 1049600, "fc_post1": 787200, "fc_post2": 262400}
REAL_CODEC_KEYS = ("encoder.block.0.weight_g", "encoder.block.1.block.0.block.1.weight_v",
                   "encoder.block.1.block.3.alpha", "encoder.block.2.block.4.weight_v",
                   "decoder_2.model.1.block.1.weight_v",
                   "decoder_semantic.conv2.conv.weight", "decoder_semantic.conv_blocks.1.res_units.1.conv2.weight",
                   "quantizer.vq.layers.7._codebook.embed_avg", "quantizer.vq.layers.0.project_in.weight",
                   "semantic_model.encoder.pos_conv_embed.conv.parametrizations.weight.original1",
                   "fc_prior.weight", "fc_post1.bias", "fc_post2.weight")


def run_cli(*args) -> subprocess.CompletedProcess:
    """The command as a user runs it: a separate process."""
    return subprocess.run([sys.executable, "-m", "higgs_tts.cli", "convert-checkpoint", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def cli(capsys, *args) -> subprocess.CompletedProcess:
    """The same entry point in this process: the refusals need no model load, so skip the interpreter start."""
    code = main(["convert-checkpoint", *map(str, args)])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


# ---------------------------------------------------------------------------------------------
# Legacy folders, built by the inverse mapping
# ---------------------------------------------------------------------------------------------

def legacy_model_key(native: str) -> str:
    prefix = "model.embed_audio_tokens.embed_audio_tokens."
    if native.startswith(prefix):
        return "audio_codebook_embeddings." + native[len(prefix):]
    if native.startswith("model."):
        return native[len("model."):]
    return "audio_decoder_proj." + native  # audio_lm_head, text_lm_head


def write_legacy_model(native_dir: Path, out: Path) -> dict[str, torch.Tensor]:
    """The tiny native model in the legacy layout, over two shards; returns the legacy tensors."""
    out.mkdir(parents=True)
    legacy = {legacy_model_key(key): value for key, value in load_file(native_dir / "model.safetensors").items()}
    # Split halves as boson_multimodal's partially frozen layers store them (frozen = the original rows).
    embed, head = legacy.pop("embed_tokens.weight"), legacy.pop("audio_decoder_proj.audio_lm_head.weight")
    legacy["embed_tokens.embedding_frozen.weight"] = embed[:128000].clone()
    legacy["embed_tokens.embedding_trainable.weight"] = embed[128000:].clone()
    legacy["audio_decoder_proj.audio_lm_head.linear_frozen.weight"] = head[:4000].clone()
    legacy["audio_decoder_proj.audio_lm_head.linear_trainable.weight"] = head[4000:].clone()
    torch.manual_seed(1)
    legacy["audio_decoder_proj.text_lm_head.weight"] = torch.randn(128256, embed.shape[1])
    legacy["rotary_emb.inv_freq"] = torch.ones(4)
    legacy["audio_codebook_weights"] = torch.full((8,), 1 / 8)

    # The frozen halves go in the first shard, the trainable ones in the second.
    first = {k: v for k, v in legacy.items() if "trainable" not in k and not k.startswith("layers.1.")}
    second = {k: v for k, v in legacy.items() if k not in first}
    weight_map = {}
    for name, part in (("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)):
        save_file(part, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    native = json.loads((native_dir / "config.json").read_text())
    text = {key: native[key] for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                         "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
                                         "rms_norm_eps", "attention_bias", "mlp_bias")}
    config = {**REAL_LEGACY_MODEL_CONFIG, "torch_dtype": "float32",
              "audio_dual_ffn_layers": list(range(native["num_hidden_layers"])),
              "audio_ffn_hidden_size": native["hidden_size"],
              "audio_ffn_intermediate_size": native["intermediate_size"],
              "text_config": {**REAL_LEGACY_MODEL_CONFIG["text_config"], **text}}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": 128001,
                                                            "pad_token_id": 128001}))
    # The legacy tokenizer: the same vocabulary, Llama-3's base eos and no pad token.
    shutil.copy(native_dir / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    return legacy


_INNER = ("snake1", "conv1", "snake2", "conv2")


def legacy_codec_key(native: str) -> str:
    """boson_multimodal's name for a native codec tensor (5 DAC blocks)."""
    rules = [
        (r"acoustic_encoder\.conv1\.", lambda m: "encoder.block.0."),
        (r"acoustic_encoder\.snake1\.", lambda m: "encoder.block.6."),
        (r"acoustic_encoder\.conv2\.", lambda m: "encoder.block.7."),
        (r"acoustic_encoder\.block\.(\d)\.res_unit(\d)\.(\w+)\.",
         lambda m: f"encoder.block.{int(m[1]) + 1}.block.{int(m[2]) - 1}.block.{_INNER.index(m[3])}."),
        (r"acoustic_encoder\.block\.(\d)\.snake1\.", lambda m: f"encoder.block.{int(m[1]) + 1}.block.3."),
        (r"acoustic_encoder\.block\.(\d)\.conv1\.", lambda m: f"encoder.block.{int(m[1]) + 1}.block.4."),
        (r"acoustic_decoder\.conv1\.", lambda m: "decoder_2.model.0."),
        (r"acoustic_decoder\.snake1\.", lambda m: "decoder_2.model.6."),
        (r"acoustic_decoder\.conv2\.", lambda m: "decoder_2.model.7."),
        (r"acoustic_decoder\.block\.(\d)\.snake1\.", lambda m: f"decoder_2.model.{int(m[1]) + 1}.block.0."),
        (r"acoustic_decoder\.block\.(\d)\.conv_t1\.", lambda m: f"decoder_2.model.{int(m[1]) + 1}.block.1."),
        (r"acoustic_decoder\.block\.(\d)\.res_unit(\d)\.(\w+)\.",
         lambda m: f"decoder_2.model.{int(m[1]) + 1}.block.{int(m[2]) + 1}.block.{_INNER.index(m[3])}."),
        (r"quantizer\.quantizers\.(\d+)\.codebook\.", lambda m: f"quantizer.vq.layers.{m[1]}._codebook."),
        (r"quantizer\.quantizers\.(\d+)\.", lambda m: f"quantizer.vq.layers.{m[1]}."),
        (r"fc\.", lambda m: "fc_prior."), (r"fc1\.", lambda m: "fc_post1."), (r"fc2\.", lambda m: "fc_post2."),
        # boson_multimodal's semantic convs sit one level deeper (a wrapper module with a `.conv` child),
        # except the 1x1 conv2 inside residual units, which is a plain nn.Conv1d subclass.
        (r"((?:en|de)coder_semantic\.(?:conv_blocks\.\d+\.)?(?:conv|conv1|conv2))\.",
         lambda m: f"{m[1]}.conv."),
        (r"((?:en|de)coder_semantic\.conv_blocks\.\d+\.res_units\.\d+\.conv1)\.", lambda m: f"{m[1]}.conv."),
    ]
    for pattern, replace_with in rules:
        if m := re.match(pattern, native):
            return replace_with(m) + native[m.end():]
    return native  # semantic_model.*, res_units.N.conv2


def write_legacy_codec(native_state: dict[str, torch.Tensor], out: Path, seed: int = 2) -> dict[str, torch.Tensor]:
    """A native codec state dict in the legacy layout: weight-normed DAC convs, legacy names."""
    out.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    legacy = {}
    for key, value in native_state.items():
        name = legacy_codec_key(key)
        if key.startswith(("acoustic_encoder.", "acoustic_decoder.")) and key.endswith(".weight"):
            # weight = g * v / |v|: any per-row rescaling of v gives the same weight, so scale it to make folding count.
            scale = torch.rand((value.shape[0],) + (1,) * (value.dim() - 1), generator=generator) + 0.5
            norm = torch.linalg.vector_norm(value, dim=list(range(1, value.dim())), keepdim=True)
            legacy[name[: -len("weight")] + "weight_g"] = norm
            legacy[name[: -len("weight")] + "weight_v"] = value * scale
        else:
            legacy[name] = value.clone()
    legacy["semantic_model.masked_spec_embed"] = torch.rand(768, generator=generator)  # in the real file too
    torch.save(legacy, out / "model.pth")
    (out / "config.json").write_text(json.dumps(REAL_LEGACY_CODEC_CONFIG))
    return legacy


@pytest.fixture(scope="module")
def full_size_codec(tmp_path_factory):
    """A full-size native codec with random weights: the legacy format fixes its sizes (DAC 64/1024, HuBERT base)."""
    from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

    config = HiggsAudioV2TokenizerConfig(
        acoustic_model_config={"downsampling_ratios": [8, 5, 4, 2, 3], "upsampling_ratios": [8, 5, 4, 2, 3]},
        target_bandwidths=[0.5, 1, 1.5, 2],
    )
    torch.manual_seed(3)
    codec = HiggsAudioV2TokenizerModel(config).eval()
    with torch.no_grad():
        for name, buffer in codec.named_buffers():
            if name.endswith("codebook.embed"):
                buffer.copy_(torch.randn_like(buffer))
    return codec


@pytest.fixture(scope="module")
def converted(tiny_checkpoint, full_size_codec, tmp_path_factory):
    """Both legacy folders converted with one run of the command."""
    root = tmp_path_factory.mktemp("convert")
    legacy_model = write_legacy_model(tiny_checkpoint[0], root / "legacy_model")
    legacy_codec = write_legacy_codec(full_size_codec.state_dict(), root / "legacy_codec")
    done = run_cli(root / "legacy_model", root / "native" / "model",
                   "--tokenizer-src", root / "legacy_codec", "--tokenizer-dst", root / "native" / "audio_tokenizer")
    assert done.returncode == 0, done.stderr
    return {"root": root, "model": root / "native" / "model", "codec": root / "native" / "audio_tokenizer",
            "legacy_model": legacy_model, "legacy_codec": legacy_codec, "stdout": done.stdout}


# ---------------------------------------------------------------------------------------------
# Conversion results
# ---------------------------------------------------------------------------------------------

def test_converted_model_has_the_original_weights(converted, settings):
    original = load_model(settings)
    result = load_model(replace(settings, model_path=str(converted["model"]), tokenizer_path=str(converted["codec"])))
    want, got = original.model.state_dict(), result.model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    # Legacy Llama-3.2 rope values and native's defaults are one parametrization: the same frequencies.
    assert torch.equal(original.model.model.rotary_emb.inv_freq, result.model.model.rotary_emb.inv_freq)


def test_converted_model_folder_is_the_native_layout(converted):
    from transformers import AutoTokenizer, GenerationConfig, HiggsAudioV2Config

    model_dir = converted["model"]
    assert HiggsAudioV2Config.from_pretrained(model_dir).model_type == "higgs_audio_v2"
    generation = GenerationConfig.from_pretrained(model_dir)
    assert (generation.eos_token_id, generation.pad_token_id) == (128009, 128001)
    assert (generation.ras_win_len, generation.ras_win_max_num_repeat) == (7, 2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.pad_token_id == 128001
    assert (model_dir / "chat_template.jinja").is_file()
    processor = json.loads((model_dir / "processor_config.json").read_text())
    assert processor["audio_tokenizer"]["audio_tokenizer_name_or_path"] == "../audio_tokenizer"
    # Sharded like the source; the text head (unused by the native model) is kept as the release keeps it.
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00002.safetensors",
                                                        "model-00002-of-00002.safetensors"]
    with safe_open(str(model_dir / index["weight_map"]["text_lm_head.weight"]), framework="pt") as f:
        assert torch.equal(f.get_tensor("text_lm_head.weight"),
                           converted["legacy_model"]["audio_decoder_proj.text_lm_head.weight"])
    assert not any("rotary" in key or "codebook_weights" in key for key in index["weight_map"])
    assert not list(converted["root"].glob("native/.*"))  # no temporary folders left behind


def test_converted_codec_has_the_original_weights_and_decodes_the_same(converted, full_size_codec, settings):
    result = load_model(replace(settings, model_path=str(converted["model"]), tokenizer_path=str(converted["codec"])))
    codec = result.codec
    assert codec.config.num_quantizers == 8 and codec.config.hop_length == 960
    want, got = full_size_codec.state_dict(), codec.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        if key.startswith(("acoustic_encoder.", "acoustic_decoder.")) and key.endswith(".weight"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)  # folded weight norm
        else:
            assert torch.equal(got[key], want[key]), key

    codes = torch.randint(0, 1024, (1, 8, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want_audio = full_size_codec.decode(codes).audio_values
        got_audio = codec.decode(codes).audio_values
    assert want_audio.shape == got_audio.shape == (1, 1, 12 * 960)
    torch.testing.assert_close(got_audio, want_audio, rtol=1e-4, atol=1e-5)


def test_legacy_codec_fixture_matches_the_real_file(converted):
    """The legacy codec built here has the real model.pth's names and value counts, so the mapping is the real one."""
    legacy = converted["legacy_codec"]
    counts = {}
    for key, value in legacy.items():
        counts[key.split(".")[0]] = counts.get(key.split(".")[0], 0) + value.numel()
    assert counts == REAL_CODEC_PARAMS
    assert sum(counts.values()) == 201426474
    assert set(REAL_CODEC_KEYS) <= legacy.keys()


def test_real_legacy_model_maps_onto_the_native_model():
    """The release's 397 tensor names and parameter counts fit the native model built from its converted config."""
    from transformers import HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = native_model_config(REAL_LEGACY_MODEL_CONFIG)
    with torch.device("meta"):
        model = HiggsAudioV2ForConditionalGeneration(config, use_text_head=True)
    native = {key: value.numel() for key, value in model.state_dict().items()}
    legacy_names = [*REAL_TOP_TENSORS] + [f"layers.{i}.{name}.weight" for i in range(28) for name in REAL_LAYER_TENSORS]
    assert len(legacy_names) == 397
    mapped = {native_model_key(name)[0]: name for name in legacy_names}
    assert mapped.keys() == native.keys()
    counts = {}
    for native_key, legacy_name in mapped.items():
        counts[legacy_name.split(".")[0]] = counts.get(legacy_name.split(".")[0], 0) + native[native_key]
    assert counts == REAL_MODEL_PARAMS

    assert (config.num_codebooks, config.codebook_size, config.audio_token_id) == (8, 1026, 128016)
    assert (config.pad_token_id, config.eos_token_id, config.audio_delay_token_id) == (128001, 128009, 128014)
    # transformers' own conversion wrote native's default rope values; they give the same frequencies.
    legacy_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    native_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](HiggsAudioV2Config(), "cpu")
    assert torch.equal(legacy_freq, native_freq)


def test_real_legacy_codec_config_gives_eight_quantizers():
    config = native_codec_config(REAL_LEGACY_CODEC_CONFIG)
    assert config.num_quantizers == 8 and config.hop_length == 960 and config.frame_rate == 25
    assert list(config.target_bandwidths) == [0.5, 1, 1.5, 2]
    assert config.semantic_downsample_factor == 2
    assert (config.acoustic_model_config.encoder_hidden_size, config.acoustic_model_config.decoder_hidden_size,
            config.acoustic_model_config.hidden_size, config.codebook_dim) == (64, 1024, 256, 64)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def legacy_model_dir(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("legacy_only") / "legacy_model"
    write_legacy_model(tiny_checkpoint[0], folder)
    return folder


def _edited_copy(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(config_changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _nothing_written(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".{name}.partial-*"))


def test_already_native_model_writes_nothing(tiny_checkpoint, tmp_path):
    done = run_cli(tiny_checkpoint[0], tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "already native" in done.stdout
    assert _nothing_written(tmp_path, "out")


def test_already_native_codec_writes_nothing(tiny_checkpoint, tmp_path, capsys):
    done = cli(capsys, tiny_checkpoint[0], tmp_path / "out", "--tokenizer-src", tiny_checkpoint[1],
                   "--tokenizer-dst", tmp_path / "codec")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("already native") == 2
    assert _nothing_written(tmp_path, "out") and _nothing_written(tmp_path, "codec")


def test_unknown_model_type_is_refused(legacy_model_dir, tmp_path, capsys):
    other = _edited_copy(legacy_model_dir, tmp_path / "other", model_type="llama")
    done = cli(capsys, other, tmp_path / "out")
    assert done.returncode == 2
    assert "model_type 'llama'" in done.stderr and "'higgs_audio'" in done.stderr
    assert _nothing_written(tmp_path, "out")


def test_missing_inputs_are_clear_errors(legacy_model_dir, tmp_path, capsys):
    done = cli(capsys, tmp_path / "nowhere", tmp_path / "out")
    assert done.returncode == 2 and "does not exist" in done.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    done = cli(capsys, empty, tmp_path / "out")
    assert done.returncode == 2 and "has no config.json" in done.stderr

    no_shard = shutil.copytree(legacy_model_dir, tmp_path / "no_shard")
    (no_shard / "model-00002-of-00002.safetensors").unlink()
    done = cli(capsys, no_shard, tmp_path / "out")
    assert done.returncode == 2 and "missing weight file(s) model-00002-of-00002.safetensors" in done.stderr

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(legacy_model_dir / "config.json", no_weights / "config.json")
    done = cli(capsys, no_weights, tmp_path / "out")
    assert done.returncode == 2 and "no *.safetensors weights" in done.stderr
    assert _nothing_written(tmp_path, "out")


def test_missing_tokenizer_leaves_no_output(legacy_model_dir, tmp_path, capsys):
    no_tokenizer = shutil.copytree(legacy_model_dir, tmp_path / "no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    done = cli(capsys, no_tokenizer, tmp_path / "out")
    assert done.returncode == 2 and "no text tokenizer" in done.stderr
    assert _nothing_written(tmp_path, "out")


def test_codec_failure_leaves_neither_output(legacy_model_dir, tmp_path, capsys):
    # The model is converted (staged) before the codec: its staged folder must vanish too.
    codec = tmp_path / "codec_src"
    codec.mkdir()
    (codec / "config.json").write_text(json.dumps(REAL_LEGACY_CODEC_CONFIG))
    done = cli(capsys, legacy_model_dir, tmp_path / "out",
               "--tokenizer-src", codec, "--tokenizer-dst", tmp_path / "codec")
    assert done.returncode == 2 and "has no model.pth" in done.stderr
    assert _nothing_written(tmp_path, "out") and _nothing_written(tmp_path, "codec")

    torch.save({"encoder.block.0.weight_g": torch.ones(64, 1, 1)}, codec / "model.pth")
    done = cli(capsys, legacy_model_dir, tmp_path / "out",
               "--tokenizer-src", codec, "--tokenizer-dst", tmp_path / "codec")
    assert done.returncode == 2 and "does not map onto the native codec" in done.stderr
    assert _nothing_written(tmp_path, "out") and _nothing_written(tmp_path, "codec")


def test_unknown_codec_folder_is_refused(legacy_model_dir, tmp_path, capsys):
    codec = tmp_path / "codec_src"
    codec.mkdir()
    (codec / "config.json").write_text(json.dumps({"model_type": "dac"}))
    done = cli(capsys, legacy_model_dir, tmp_path / "out",
               "--tokenizer-src", codec, "--tokenizer-dst", tmp_path / "codec")
    assert done.returncode == 2 and "not a Higgs Audio V2 audio tokenizer" in done.stderr
    assert _nothing_written(tmp_path, "out")


def test_unsupported_legacy_variants_are_refused(legacy_model_dir, tmp_path, capsys):
    stacked = _edited_copy(legacy_model_dir, tmp_path / "stacked", audio_adapter_type="stack")
    done = cli(capsys, stacked, tmp_path / "out")
    assert done.returncode == 2 and "audio_adapter_type='stack'" in done.stderr

    extra = shutil.copytree(legacy_model_dir, tmp_path / "extra")
    index = json.loads((extra / "model.safetensors.index.json").read_text())
    save_file({"audio_tower.conv1.weight": torch.zeros(2)}, str(extra / "model-00003.safetensors"))
    index["weight_map"]["audio_tower.conv1.weight"] = "model-00003.safetensors"
    (extra / "model.safetensors.index.json").write_text(json.dumps(index))
    done = cli(capsys, extra, tmp_path / "out")
    assert done.returncode == 2
    assert "does not map onto the native model" in done.stderr and "audio_tower.conv1.weight" in done.stderr
    assert _nothing_written(tmp_path, "out")


def test_existing_destination_and_half_given_options_are_refused(legacy_model_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    done = cli(capsys, legacy_model_dir, tmp_path / "out")
    assert done.returncode == 2 and "already exists" in done.stderr
    assert not any((tmp_path / "out").iterdir())

    done = cli(capsys, legacy_model_dir, tmp_path / "new", "--tokenizer-src", tmp_path)
    assert done.returncode == 2 and "--tokenizer-src and --tokenizer-dst go together" in done.stderr
    assert _nothing_written(tmp_path, "new")


def test_model_only_conversion_names_the_native_codecs(legacy_model_dir, tmp_path, capsys):
    done = cli(capsys, legacy_model_dir, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "bosonai/higgs-audio-v2-tokenizer" in done.stdout and "eustlb/higgs-audio-v2-tokenizer" in done.stdout
    processor = json.loads((tmp_path / "out" / "processor_config.json").read_text())
    assert processor["audio_tokenizer"]["audio_tokenizer_name_or_path"] == "bosonai/higgs-audio-v2-tokenizer"
