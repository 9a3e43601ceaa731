"""What a streamed synthesis yields, typed: every surface (RunPod stream items, chunked HTTP, SSE)
matches on these instead of testing for arrays.

    Audio(samples)      a piece of the clip, float32 mono at 24 kHz, in order
    Done(result)        generation ended: the SynthesisResult (its audio is the pieces joined)
    Final(response)     a streamed job ended: its documented response, success or failure
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..synthesis.synthesizer import SynthesisResult


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray


@dataclass(frozen=True)
class Done:
    result: SynthesisResult


@dataclass(frozen=True)
class Final:
    response: dict


SynthesisEvent = Audio | Done
JobEvent = Audio | Final


def typed(items: Iterator) -> Iterator[SynthesisEvent]:
    """Synthesizer.stream's items (arrays, then the result) as events."""
    for item in items:
        yield Done(item) if isinstance(item, SynthesisResult) else Audio(item)
