"""Phrases that arrive one at a time (a live session), spoken in one voice."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from .plan import spoken_text


class LiveSynthesis:
    """Phrases generated one after another, each with the earlier ones as context, exactly as the
    chunks of one long text are (same prompt, same seed): the voice stays the same, and the frames
    equal those of one request chunked into the same phrases.

        phrase(text) -> Iterator[frames [n, K]]   one phrase; closing it early frees its engine slot
                                                  at the next burst and leaves it out of the context
    """

    def __init__(self, synthesizer, request) -> None:
        """`synthesizer` starts the session's one run; its holder decodes."""
        self.request = request
        self.run = synthesizer.start(request)
        self.run.encode_voices()  # once for the session

    @property
    def seed(self) -> int:
        return self.run.seed

    @property
    def voice_names(self) -> list[str]:
        return list(self.run.plan.voice_names)

    @property
    def hop(self) -> int:
        return self.run.loaded.hop_length

    @property
    def sample_rate(self) -> int:
        return self.run.loaded.sample_rate

    def decode(self, frames: torch.Tensor) -> np.ndarray:
        return self.run.models.decode(frames)

    def phrase(self, text: str) -> Iterator[torch.Tensor]:
        """The new frames of one phrase (any text; normalized here) as they are generated."""
        chunk = spoken_text(text)
        request = dataclasses.replace(self.request, text=text)  # speaker tags are counted in the phrase
        with self.run.admission():  # an idle session holds no place
            yield from self.run.chunk_frames(chunk, request)
