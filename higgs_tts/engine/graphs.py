"""CUDA graphs of the decode step: captured once per (rows, attended length) and replayed.

A replay launches the whole step (sampler, bookkeeping, all layers, the head) as one graph: no
Python, no per-kernel launch cost. Everything it reads and writes lives in the batch's static
buffers, views of which the graph was captured with; the KV cache is a view of the batch's one
cache, so every graph shares its memory.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

# One capture at a time in the process, and no empty_cache() while one is under way (torch
# asserts on both): captures and cache flushes take this lock.
CAPTURE_LOCK = threading.Lock()


def free_cached_memory() -> None:
    """torch.cuda.empty_cache(), never in the middle of a graph capture."""
    if torch.cuda.is_available():
        with CAPTURE_LOCK:
            torch.cuda.empty_cache()


class StepGraphs:
    def __init__(self, batch) -> None:
        # A proxy: the batch owns its graphs, and a strong reference back would make a cycle that keeps a
        # dropped batch's KV cache and graph pool on the card until the garbage collector's next full pass.
        self.batch = weakref.proxy(batch)
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._pool = None  # one memory pool for all graphs: they never run at the same time
        self._stream = torch.cuda.Stream(device=batch.device)  # warm-up and capture on the same stream

    def __len__(self) -> int:
        return len(self._graphs)

    @torch.inference_mode()
    def _capture(self, rows: int, length: int) -> torch.cuda.CUDAGraph:
        with CAPTURE_LOCK:
            step = self.batch.make_step(rows, length)
            # Warm-up and capture run the step for real: the state is saved and put back after,
            # so running sequences do not notice. (The KV writes land at each row's next position,
            # which the row writes again before it reads it.)
            saved = [t.clone() for t in self.batch.state()]
            try:
                self._stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self._stream):
                    for _ in range(2):  # warm up kernels and the allocator outside the graph
                        step()
                torch.cuda.current_stream().wait_stream(self._stream)
                graph = torch.cuda.CUDAGraph()
                # thread_local: request threads keep running the codec while the engine thread captures.
                with torch.cuda.graph(graph, pool=self._pool, stream=self._stream,
                                      capture_error_mode="thread_local"):
                    step()
                self._pool = graph.pool()
            finally:  # a failed capture leaves the state as it found it too: decoding goes on eagerly
                for tensor, value in zip(self.batch.state(), saved, strict=True):
                    tensor.copy_(value)
        log.info("captured the decode step for %d rows over %d positions", rows, length)
        return graph

    def step(self, rows: int, length: int) -> Callable[[], None]:
        """The captured step for `rows` rows over `length` positions, as a function of no arguments."""
        if (rows, length) not in self._graphs:
            self._graphs[(rows, length)] = self._capture(rows, length)
        return self._graphs[(rows, length)].replay
