"""One request inside the engine: its slot, its progress, and the columns handed to its reader."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..core.sampling import SamplingParams

_END = object()


@dataclass(frozen=True)
class EngineRequest:
    inputs: dict[str, torch.Tensor]  # from PromptRenderer.inputs (batch of one)
    params: SamplingParams
    seed: int


class Sequence:
    """Written by the engine's loop, read by the request's own thread through `pieces()`."""

    def __init__(self, request: EngineRequest, ignore_eos: bool = False) -> None:
        self.request = request
        self.ignore_eos = ignore_eos  # run all max_new_tokens steps (benchmarks, warm-up)
        self.prompt_len = int(request.inputs["input_ids"].shape[1])
        self.max_new_tokens = request.params.max_new_tokens
        self.generated = 0  # columns handed out so far
        self.launched = 0  # decode steps launched for it (ahead of `generated` while a burst is in flight)
        self.finished = False
        self.cancelled = threading.Event()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()

    @property
    def needed_len(self) -> int:
        """Cache positions the sequence can use: its prompt and every column it may generate."""
        return self.prompt_len + self.max_new_tokens

    @property
    def position(self) -> int:
        """The cache position its next launched step writes."""
        return self.prompt_len + self.launched

    def cancel(self) -> None:
        self.cancelled.set()

    def deliver(self, block: torch.Tensor, row: int, count: int) -> None:
        """`count` new columns in row `row` of a burst's `[rows, steps, K]` block (sliced by the reader)."""
        if count:
            self._outbox.put((block, row, count))

    def finish(self, error: BaseException | None = None) -> None:
        self.finished = True
        self._outbox.put(error if error is not None else _END)

    def ready(self) -> Iterator[torch.Tensor]:
        """The columns handed out so far, without waiting (a caller that drives the loop itself);
        raises the engine's error if it failed."""
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            block, row, count = item
            yield block[row, :count]

    def pieces(self) -> Iterator[torch.Tensor]:
        """The generated columns `[n, K]` as they come; raises the engine's error if it failed.
        Closing the iterator early cancels the sequence, which frees its slot."""
        try:
            while (item := self._outbox.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                block, row, count = item
                yield block[row, :count]
        finally:
            self.cancel()
