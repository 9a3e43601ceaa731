"""What a synthesis takes and gives: the request (checked when made), the result, and the
exceptions and callbacks around a run.

    SynthesisRequest(text, voices, scene, chunking, sampling, seed, reference) -> SynthesisResult
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.sampling import MAX_SEED, ChunkParams, SamplingParams
from ..core.text import CHUNK_METHODS


@dataclass(frozen=True)
class ReferenceClip:
    """A voice sent with the request: 24 kHz mono audio, and its transcript when known.

    With a transcript it is an in-context example like a library voice; without one it goes into
    the system block.
    """

    audio: np.ndarray
    transcript: str | None = None
    name: str = "uploaded"


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    voices: str | list[str] | None = None  # "belinda,chadwick" = SPEAKER0, SPEAKER1
    scene: str | None = None  # None: the default scene; "": no scene
    chunk_method: str | None = None
    # core.sampling.ChunkParams' knobs, flat (their defaults and bounds are written there)
    chunk_max_word_num: int = ChunkParams.chunk_max_word_num
    chunk_max_num_turns: int = ChunkParams.chunk_max_num_turns
    generation_chunk_buffer_size: int | None = ChunkParams.generation_chunk_buffer_size  # None: every chunk
    ref_audio_in_system_message: bool = False
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None  # None: a random seed, reported in the result
    reference: ReferenceClip | None = None  # spoken by the speaker after the named voices

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("text must be a non-empty string")
        if self.chunk_method is not None and self.chunk_method not in CHUNK_METHODS:
            raise ValueError(
                f"chunk_method must be null or one of {', '.join(CHUNK_METHODS)}; got {self.chunk_method!r}"
            )
        ChunkParams(self.chunk_max_word_num, self.chunk_max_num_turns, self.generation_chunk_buffer_size)
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}; got {self.seed!r}")


class Cancelled(RuntimeError):
    """The caller cancelled the request; its engine slot has been given back."""


@dataclass
class SynthesisResult:
    audio: np.ndarray  # float32 mono
    codes: torch.Tensor  # [T, num_codebooks]: every chunk's frames, decoded together into `audio`
    sample_rate: int
    num_frames: int
    text: str  # the normalized text that was spoken
    chunks: list[str]
    seed: int
    voices: list[str]
    model_load_seconds: float
    generation_seconds: float
    decode_seconds: float
    first_audio_seconds: float | None = None  # streaming: from the call to the first audio chunk
    voice_kinds: list[str] = field(default_factory=list)  # per entry of `voices`: "clone" or "described"
    cut_chunks: tuple[int, ...] = ()  # chunks that reached max_new_tokens before the model ended them

    @property
    def duration_seconds(self) -> float:
        return len(self.audio) / float(self.sample_rate)


# Told after each chunk: (chunks done, chunks in all, seconds of audio generated so far).
Progress = Callable[[int, int, float], None]
