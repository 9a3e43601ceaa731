"""What a streamed job yields, typed: the synthesis events (synthesis/events.py) and, last, Final.

    Audio(samples)      a piece of the clip, float32 mono at 24 kHz, in order
    ChunkEnd(...)       a text chunk's generation has ended (chunks done, in all, audio seconds)
    Final(response)     a streamed job ended: its documented response, success or failure

Every transport (RunPod stream items, Wyoming) matches on these instead of testing for arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..synthesis.events import Audio, ChunkEnd, Done, SynthesisEvent


@dataclass(frozen=True)
class Final:
    response: dict


JobEvent = Audio | ChunkEnd | Final

__all__ = ["Audio", "ChunkEnd", "Done", "Final", "JobEvent", "SynthesisEvent"]
