"""Incremental decode: audio chunks from frames as they are generated.

The codec is non-causal (frames on either side change a frame's samples), so each chunk is
decoded inside a window with `context` frames on both sides, and consecutive chunks are
crossfaded over the first `crossfade` samples.

First audio early: the first chunk (`first_chunk` frames) waits for only `first_context` frames
on its right, so it leaves after 16 frames by default; the chunks after it double in size up to
`chunk` and have the full `context`. Wherever the codec's reach to the right is within
`first_context` (the tiny checkpoint's is about 4 frames), the concatenated chunks equal one decode
of all frames within float error (tested); beyond it, only the first chunk's last samples can
differ, and the crossfade joins them to the next chunk, decoded with full context, without a step
(docs/engine.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class StreamingDecoder:
    def __init__(self, decode: Callable[[torch.Tensor], np.ndarray], hop: int = 960, first_chunk: int = 8,
                 chunk: int = 40, context: int = 32, crossfade: int = 240, first_context: int = 8) -> None:
        if not (first_chunk >= 1 and chunk >= 1 and context >= 0 and 0 <= first_context
                and 0 <= crossfade <= hop * min(first_chunk, chunk)):
            raise ValueError("first_chunk and chunk must be >= 1, context and first_context >= 0, crossfade "
                             "within a chunk")
        self.decode, self.hop = decode, hop
        self.first_chunk, self.chunk, self.context, self.crossfade = first_chunk, chunk, context, crossfade
        self.first_context = min(first_context, context)
        self._size = 0  # frames in the last chunk handed out; 0 before the first and after a finish()
        self._frames: list[torch.Tensor] = []
        self._total = 0
        self._emitted = 0  # frames whose samples have been handed out
        self._overhang: np.ndarray | None = None  # the last window's samples just past its chunk

    def _all(self) -> torch.Tensor:
        if len(self._frames) > 1:
            self._frames = [torch.cat(self._frames)]
        return self._frames[0]

    def _emit(self, end: int, right: int) -> np.ndarray:
        """Samples of frames [emitted, end), decoded with context up to frame `right`."""
        start = max(0, self._emitted - self.context)
        audio = self.decode(self._all()[start:right])
        offset = (self._emitted - start) * self.hop
        chunk = audio[offset : offset + (end - self._emitted) * self.hop].copy()
        if self._overhang is not None and self.crossfade:
            fade = min(self.crossfade, len(chunk), len(self._overhang))
            weight = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            chunk[:fade] = self._overhang[:fade] * (1 - weight) + chunk[:fade] * weight
        tail = offset + (end - self._emitted) * self.hop
        self._overhang = audio[tail : tail + self.crossfade]
        self._emitted = end
        return chunk

    def push(self, frames: torch.Tensor) -> list[np.ndarray]:
        """Add frames `[n, K]`; returns the chunks that became ready (maybe none)."""
        if frames.shape[0]:
            self._frames.append(frames)
            self._total += frames.shape[0]
        chunks = []
        while True:
            # 8 frames with 8 on their right, then 16, 32, ... up to `chunk`, each with `context`; after
            # a pause (finish) the ramp starts again, so the next phrase's first audio is early too
            first = self._size == 0
            size = self.first_chunk if first else min(self.chunk, 2 * self._size)
            right = self.first_context if first else self.context
            if self._total - self._emitted < size + right:
                return chunks
            end = self._emitted + size
            self._size = size
            chunks.append(self._emit(end, end + right))

    def finish(self) -> np.ndarray:
        """The remaining audio, once generation has ended (or pauses: frames pushed after it are
        decoded on, with the earlier frames as left context)."""
        self._size = 0
        if self._total == self._emitted:
            return np.zeros(0, dtype=np.float32)
        return self._emit(self._total, self._total)
