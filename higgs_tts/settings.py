"""Configuration from environment variables, read in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"
DEFAULT_TOKENIZER = "bosonai/higgs-audio-v2-tokenizer"
DEFAULT_VOICE_PROMPTS = "voice_prompts"


def _optional(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@dataclass(frozen=True)
class Settings:
    """Where the model, codec and voices live, and where to run them.

    `device` and `dtype` of None mean automatic: CUDA with bf16 when available, else CPU with
    float32.
    """

    model_path: str = DEFAULT_MODEL
    tokenizer_path: str = DEFAULT_TOKENIZER
    model_revision: str | None = None
    tokenizer_revision: str | None = None
    voice_prompts_path: Path = field(default_factory=lambda: Path(DEFAULT_VOICE_PROMPTS))
    device: str | None = None
    dtype: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            model_path=_optional("MODEL_PATH") or DEFAULT_MODEL,
            tokenizer_path=_optional("TOKENIZER_PATH") or DEFAULT_TOKENIZER,
            model_revision=_optional("MODEL_REVISION"),
            tokenizer_revision=_optional("TOKENIZER_REVISION"),
            voice_prompts_path=Path(_optional("VOICE_PROMPTS_PATH") or DEFAULT_VOICE_PROMPTS),
            device=_optional("DEVICE"),
            dtype=_optional("DTYPE"),
        )
