import json
import shutil

import pytest
import torch

from higgs_tts.core.checkpoint import (
    CONVERT_COMMAND,
    CheckpointError,
    ModelCache,
    check_native,
    load_model,
    pick_device,
    pick_dtype,
    resolve_path,
)


def test_native_checkpoint_loads_through_transformers(settings):
    from transformers import HiggsAudioV2ForConditionalGeneration, HiggsAudioV2Processor, HiggsAudioV2TokenizerModel

    loaded = load_model(settings)
    assert isinstance(loaded.model, HiggsAudioV2ForConditionalGeneration)
    assert isinstance(loaded.processor, HiggsAudioV2Processor)
    assert isinstance(loaded.codec, HiggsAudioV2TokenizerModel)
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert (loaded.sample_rate, loaded.hop_length) == (24000, 960)
    tokenizer = loaded.tokenizer
    # The real checkpoint's ids (docs/model-facts.md, section 2), so prompts render the ids real weights see.
    real_ids = {"<|AUDIO_OUT|>": 128016, "<|audio_out_bos|>": 128013, "<|eot_id|>": 128009, "<|AUDIO|>": 128015,
                "<|audio_bos|>": 128011, "<|recipient|>": 128017, "<|scene_desc_start|>": 128018,
                "<|scene_desc_end|>": 128019, "<SE>": 128022, "</SE>": 128023, "<SE_s>": 128024,
                "</SE_s>": 128025, "<SE_e>": 128026, "</SE_e>": 128027}
    for token, token_id in real_ids.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]
    assert tokenizer.eos_token == "<|end_of_text|>"


def test_model_cache_loads_once(settings):
    cache = ModelCache()
    first, loaded_now = cache.get(settings)
    second, loaded_again = cache.get(settings)
    assert loaded_now and not loaded_again and first is second


def _copy_with_model_type(src, dst, model_type):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["model_type"] = model_type
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_legacy_checkpoint_names_the_converter(tiny_checkpoint, tmp_path):
    legacy = _copy_with_model_type(tiny_checkpoint[0], tmp_path / "legacy", "higgs_audio")
    with pytest.raises(CheckpointError, match=f"legacy.*`{CONVERT_COMMAND}`"):
        check_native(legacy, "model")


def test_other_model_type_is_rejected(tiny_checkpoint, tmp_path):
    other = _copy_with_model_type(tiny_checkpoint[0], tmp_path / "other", "llama")
    with pytest.raises(CheckpointError, match="model_type 'llama'; expected 'higgs_audio_v2'"):
        check_native(other, "model")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        check_native(tmp_path, "model")


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_path(str(tmp_path / "nope"))


def test_repo_id_goes_through_the_hub_cache(tmp_path, monkeypatch):
    # Offline with an empty cache: the error names the repo and says what to do.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="cannot get someone/some-model"):
        resolve_path("someone/some-model")


def test_device_and_dtype_choice():
    assert pick_dtype(None, torch.device("cpu")) == torch.float32
    assert pick_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("float32", torch.device("cuda")) == torch.float32
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(CheckpointError, match="dtype 'int8'"):
        pick_dtype("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert pick_device(None) == torch.device("cpu")
        with pytest.raises(CheckpointError, match="CUDA is not available"):
            pick_device("cuda")


def test_a_codec_with_another_quantizer_count_is_refused_at_load(tiny_checkpoint, tmp_path):
    from higgs_tts.core.checkpoint import load_model
    from higgs_tts.settings import Settings

    codec = tmp_path / "codec16"
    shutil.copytree(tiny_checkpoint[1], codec)
    config = json.loads((codec / "config.json").read_text())
    config["target_bandwidths"] = [0.5, 1, 1.5, 2, 4]  # 4 kbps at 25 frames/s of 10 bits: 16 quantizers
    (codec / "config.json").write_text(json.dumps(config))
    settings = Settings(model_path=str(tiny_checkpoint[0]), tokenizer_path=str(codec), device="cpu")
    with pytest.raises(CheckpointError, match="encodes with 16 quantizers .* reads 8 codebooks"):
        load_model(settings)
