"""What a streamed synthesis yields, typed. `Synthesizer.stream` yields only these, and every
surface (the service's jobs, RunPod stream items, chunked HTTP, SSE, Wyoming) matches on them:

    Audio(samples)                      a piece of the clip, float32 mono at 24 kHz, in order
    ChunkEnd(done, total, audio_seconds)  a text chunk's generation has ended (its audio may still
                                        be decoding): chunks done, chunks in all, seconds generated
    Done(result)                        generation ended: the SynthesisResult (its audio is the
                                        pieces joined); always the last event
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .request import SynthesisResult


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray


@dataclass(frozen=True)
class ChunkEnd:
    done: int
    total: int
    audio_seconds: float


@dataclass(frozen=True)
class Done:
    result: SynthesisResult


SynthesisEvent = Audio | ChunkEnd | Done
