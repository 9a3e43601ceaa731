"""CUDA graphs of the decode step: captured once per (rows, attended length) and replayed.

A replay launches the whole step (all layers, the head) as one graph: no Python, no per-kernel
launch cost. Inputs and outputs live in static buffers that the graph was captured with; the KV
cache it reads and writes is a view of the batch's one cache, so every graph shares its memory.
"""

from __future__ import annotations

import logging
import threading

import torch

from .kv_cache import StaticKVCache
from .model_runner import ModelRunner

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
    def __init__(self, runner: ModelRunner, cache: StaticKVCache) -> None:
        self.runner = runner
        self.cache = cache
        self._graphs: dict[tuple[int, int], tuple] = {}
        self._pool = None  # one memory pool for all graphs: they never run at the same time
        self._stream = torch.cuda.Stream(device=runner.device)  # warm-up and capture on the same stream

    def _capture(self, rows: int, length: int):
        with CAPTURE_LOCK:
            runner = self.runner
            view = self.cache.view(rows, length)
            codes = torch.zeros((rows, runner.num_codebooks), dtype=torch.long, device=runner.device)
            # Capture writes at the last attended position, which no sequence reads before writing it itself.
            positions = torch.full((rows,), length - 1, dtype=torch.long, device=runner.device)
            self._stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._stream):
                for _ in range(2):  # warm up kernels and allocator outside the graph
                    runner.decode_one_token(view, codes, positions)
            torch.cuda.current_stream().wait_stream(self._stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: request threads keep running the codec while the engine thread captures.
            with torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"):
                logits = runner.decode_one_token(view, codes, positions)
            self._pool = graph.pool()
        log.info("captured the decode step for %d rows over %d positions", rows, length)
        return graph, view, codes, positions, logits  # the view (and its row index) lives as long as the graph

    def step(self, rows: int, length: int):
        """A function (column, positions) -> logits that replays the graph for `rows` rows."""
        if (rows, length) not in self._graphs:
            self._graphs[(rows, length)] = self._capture(rows, length)
        graph, _, codes, positions, logits = self._graphs[(rows, length)]

        def replay(column: torch.Tensor, new_positions: torch.Tensor) -> torch.Tensor:
            codes.copy_(column)
            positions.copy_(new_positions)
            graph.replay()
            return logits

        return replay
