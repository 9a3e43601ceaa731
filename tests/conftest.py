"""Shared fixtures: the project's tiny checkpoint and the real voice clips from ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from higgs_tts.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HIGGS_SHARED_DIR", REPO.parent / "shared"))
VOICE_PROMPTS = SHARED / "voice_prompts"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """Built with the project's own command, exactly as the README tells users to."""
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run(
        [sys.executable, "-m", "higgs_tts.cli", "tiny-checkpoint", str(out)],
        check=True,
        capture_output=True,
    )
    return out / "model", out / "audio_tokenizer"


@pytest.fixture(scope="session")
def voice_prompts() -> Path:
    if not (VOICE_PROMPTS / "belinda.wav").is_file():
        pytest.fail(f"voice clips missing: expected them under {VOICE_PROMPTS}")
    return VOICE_PROMPTS


@pytest.fixture(scope="session")
def settings(tiny_checkpoint, voice_prompts) -> Settings:
    model_dir, codec_dir = tiny_checkpoint
    return Settings(
        model_path=str(model_dir),
        tokenizer_path=str(codec_dir),
        voice_prompts_path=voice_prompts,
        device="cpu",
    )
