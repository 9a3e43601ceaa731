"""CUDA graphs of the decode step: captured once per batch size for one cache length.

A replay launches the whole step (all layers, the head) as one graph: no Python, no per-kernel
launch cost. Inputs and outputs live in static buffers that the graph was captured with.
"""

from __future__ import annotations

import logging

import torch

from .model_runner import ModelRunner

log = logging.getLogger(__name__)


class StepGraphs:
    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self._graphs: dict[int, tuple] = {}

    def _capture(self, batch: int):
        runner = self.runner
        cache = runner.cache(batch)
        codes = torch.full((batch, runner.num_codebooks), 0, dtype=torch.long, device=runner.device)
        # Capture writes at the last position, which no sequence reads before writing it itself.
        positions = torch.full((batch,), runner.max_len - 1, dtype=torch.long, device=runner.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and allocator outside the graph
                runner.decode_one_token(cache, codes, positions)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = runner.decode_one_token(cache, codes, positions)
        log.info("captured the decode step for batch %d, cache length %d", batch, runner.max_len)
        return graph, codes, positions, logits

    def step(self, batch: int):
        """A function (column, positions) -> logits that replays the graph for `batch` rows."""
        if batch not in self._graphs:
            self._graphs[batch] = self._capture(batch)
        graph, codes, positions, logits = self._graphs[batch]

        def replay(column: torch.Tensor, new_positions: torch.Tensor) -> torch.Tensor:
            codes.copy_(column)
            positions.copy_(new_positions)
            graph.replay()
            return logits

        return replay
