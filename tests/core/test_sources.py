"""Where a checkpoint loads from (core/sources.py): a folder, the volume's copy, RunPod's cached
models, the Hugging Face cache, in that order, with no network call."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from higgs_tts.core.checkpoint import CheckpointError, resolve_path, unavailable_reason
from higgs_tts.core.sources import find, sources
from higgs_tts.settings import DEFAULT_MODEL, DEFAULT_TOKENIZER, Settings
from tests.conftest import hf_cache_layout


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Empty volume, RunPod cache and HF cache; no Hub (offline, and its address a closed port)."""
    from huggingface_hub import constants

    hf = tmp_path / "hf" / "hub"
    hf.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    settings = Settings(models_dir=tmp_path / "volume" / "models", runpod_model_cache=tmp_path / "runpod" / "hub")
    return settings, hf


def test_a_folder_is_used_as_it_is(tiny_checkpoint, places):
    settings, _ = places
    model_dir, _ = tiny_checkpoint
    source = find(str(model_dir), None, settings)
    assert (source.origin, source.path) == ("folder", model_dir)


def test_the_first_place_that_holds_the_repo_wins(tiny_checkpoint, places):
    settings, hf = places
    model_dir, _ = tiny_checkpoint
    assert find(DEFAULT_MODEL, None, settings).describe() == {"origin": "download", "path": None}
    assert unavailable_reason(DEFAULT_MODEL, None, settings) == f"{DEFAULT_MODEL} is not in the Hugging Face cache yet"
    with pytest.raises(CheckpointError, match=f"cannot get {DEFAULT_MODEL}"):
        resolve_path(DEFAULT_MODEL, None, settings)

    in_hf = hf_cache_layout(hf, DEFAULT_MODEL, model_dir)
    assert find(DEFAULT_MODEL, None, settings).describe() == {"origin": "hf-cache", "path": str(in_hf)}
    in_runpod = hf_cache_layout(settings.runpod_model_cache, DEFAULT_MODEL, model_dir, commit="f" * 40)
    assert find(DEFAULT_MODEL, None, settings).describe() == {"origin": "runpod-cache", "path": str(in_runpod)}
    assert resolve_path(DEFAULT_MODEL, None, settings) == in_runpod
    assert unavailable_reason(DEFAULT_MODEL, None, settings) is None
    copy = settings.models_dir / DEFAULT_MODEL.split("/")[1]
    shutil.copytree(model_dir, copy)
    assert find(DEFAULT_MODEL, None, settings).describe() == {"origin": "volume", "path": str(copy)}
    # a pinned revision is not the volume's copy; the RunPod cache has it, the HF cache has another
    assert find(DEFAULT_MODEL, "f" * 40, settings).origin == "runpod-cache"
    # turned off, each place is skipped
    off = dataclasses.replace(settings, models_dir=None, runpod_model_cache=None)
    assert find(DEFAULT_MODEL, None, off).describe() == {"origin": "hf-cache", "path": str(in_hf)}


def test_a_runpod_cache_without_that_revision_falls_through(tiny_checkpoint, places):
    settings, hf = places
    model_dir, _ = tiny_checkpoint
    hf_cache_layout(settings.runpod_model_cache, DEFAULT_MODEL, model_dir, commit="a" * 40)
    pinned = "b" * 40
    in_hf = hf_cache_layout(hf, DEFAULT_MODEL, model_dir, commit=pinned)
    assert find(DEFAULT_MODEL, pinned, settings).describe() == {"origin": "hf-cache", "path": str(in_hf)}


def test_health_sources_name_each_part(tiny_checkpoint, places):
    settings, hf = places
    model_dir, codec_dir = tiny_checkpoint
    hf_cache_layout(settings.runpod_model_cache, DEFAULT_MODEL, model_dir)
    hf_cache_layout(hf, DEFAULT_TOKENIZER, codec_dir)
    found = {kind: source.origin for kind, source in sources(settings).items()}
    assert found == {"model": "runpod-cache", "tokenizer": "hf-cache"}


def test_settings_read_the_places_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNPOD_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELS_DIR", "off")
    settings = Settings.from_env()
    assert settings.runpod_model_cache == tmp_path / "cache" and settings.models_dir is None
    monkeypatch.delenv("RUNPOD_MODEL_CACHE")
    monkeypatch.delenv("MODELS_DIR")
    defaults = Settings.from_env()
    assert str(defaults.runpod_model_cache) == "/runpod-volume/huggingface-cache/hub"
    assert str(defaults.models_dir) == "/runpod-volume/models"
