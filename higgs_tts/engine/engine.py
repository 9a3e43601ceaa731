"""The fast engine: prefill each prompt, then decode every sequence of the batch together.

    prefill (model's forward, per prompt, into its cache slot)
    loop:  sample column on the device -> decode_one_token -> logits
           every `check_every` steps: one host sync to see whether all rows are done

Output per request: the generated columns `[L, K]`, first the all-BOS column, last the all-EOS
column (when the stream ended before `max_new_tokens`): the same as the reference path returns.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..core.codes import STREAM_BOS
from ..core.generation import SamplingParams
from .graphs import StepGraphs
from .model_runner import ModelRunner
from .sampler import DelayPattern, SamplingTensors, sample

log = logging.getLogger(__name__)

CACHE_BUCKET = 512  # cache lengths are rounded up to this, so graphs are reused across requests
MAX_RUNNERS = 4  # cache lengths kept (each holds its KV caches and graphs); the oldest is dropped
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # graph batch sizes: a batch of 5 runs in the graph of 8


def padded_batch(batch: int) -> int:
    """The bucket a batch runs in (itself when above the largest)."""
    return next((b for b in BATCH_BUCKETS if b >= batch), batch)


@dataclass
class GenerationStats:
    """Timings of the last `generate` call (seconds)."""

    prefill_seconds: float = 0.0
    first_frame_seconds: float = 0.0  # from the call to the first fully generated frame (column K)
    decode_seconds: float = 0.0
    steps: int = 0


@dataclass(frozen=True)
class EngineRequest:
    inputs: dict[str, torch.Tensor]  # from PromptRenderer.inputs (batch of one)
    params: SamplingParams
    seed: int


class FastEngine:
    def __init__(self, model, check_every: int = 16, use_cuda_graphs: bool | None = None,
                 pad_batches: bool | None = None) -> None:
        self.model = model
        self.check_every = check_every
        self.device = model.device
        self.use_cuda_graphs = self.device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        # Padding batches to BATCH_BUCKETS bounds the graphs captured; eager steps gain nothing by it.
        self.pad_batches = self.use_cuda_graphs if pad_batches is None else pad_batches
        self._runners: dict[int, ModelRunner] = {}
        self._graphs: dict[int, StepGraphs] = {}
        self.stats = GenerationStats()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _runner(self, max_len: int) -> ModelRunner:
        if max_len in self._runners:
            self._runners[max_len] = self._runners.pop(max_len)  # most recently used last
        else:
            while len(self._runners) >= MAX_RUNNERS:  # free the least recently used caches and graphs
                oldest = next(iter(self._runners))
                del self._runners[oldest]
                self._graphs.pop(oldest, None)
            self._runners[max_len] = ModelRunner(self.model, max_len)
        return self._runners[max_len]

    def generate(self, requests: list[EngineRequest], ignore_eos: bool = False) -> list[torch.Tensor]:
        """Generate every request's columns. `ignore_eos` runs all `max_new_tokens` steps (warm-up,
        benchmarks) instead of stopping when a stream ends."""
        columns, lengths = deque(self._run(requests, ignore_eos), maxlen=1)[0]  # run to the end
        return [columns[b, : int(lengths[b])].clone() for b in range(len(requests))]

    def stream(self, request: EngineRequest) -> Iterator[torch.Tensor]:
        """One request's columns as they are generated, in pieces of up to `check_every` columns."""
        sent = 0
        for columns, lengths in self._run([request], ignore_eos=False):
            length = int(lengths[0])
            if length > sent:
                yield columns[0, sent:length].clone()
                sent = length

    @torch.inference_mode()
    def _run(self, requests: list[EngineRequest], ignore_eos: bool):
        """The decode loop. Yields (columns [B, S, K], lengths [B]) at every host check and once at
        the end; the tensors are the loop's own (copy what you keep)."""
        started = time.perf_counter()
        batch = len(requests)
        num_codebooks = self.model.config.num_codebooks
        prompt_lens = [int(r.inputs["input_ids"].shape[1]) for r in requests]
        longest = max(p + r.params.max_new_tokens for p, r in zip(prompt_lens, requests, strict=True))
        max_len = -(-(longest + self.check_every) // CACHE_BUCKET) * CACHE_BUCKET
        runner = self._runner(max_len)
        rows = padded_batch(batch) if self.pad_batches else batch  # rows past `batch` are padding
        cache = runner.cache(rows)

        window = max([r.params.ras_win_len for r in requests] + [1])
        history = torch.full((batch, window, num_codebooks), STREAM_BOS, dtype=torch.long, device=self.device)
        logits = torch.empty((batch, num_codebooks, runner.codebook_size), device=self.device)
        for slot, request in enumerate(requests):
            logits[slot] = runner.prefill(request.inputs, cache, slot)
            prompt_audio = request.inputs.get("audio_input_ids")
            if prompt_audio is not None:  # RAS looks back into the prompt's audio, as the reference does
                tail = prompt_audio[0, -window:]
                history[slot, window - tail.shape[0]:] = tail

        self._sync()
        prefilled = time.perf_counter()
        params = SamplingTensors.build([r.params for r in requests], [r.seed for r in requests],
                                       runner.codebook_size, self.device)
        pattern = DelayPattern(batch, num_codebooks, self.device)
        limits = torch.tensor([r.params.max_new_tokens for r in requests], device=self.device)
        positions = torch.tensor(prompt_lens, device=self.device)
        steps = torch.zeros(batch, dtype=torch.long, device=self.device)
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        lengths = torch.zeros(batch, dtype=torch.long, device=self.device)
        max_steps = max(r.params.max_new_tokens for r in requests)
        columns = torch.empty((batch, max_steps, num_codebooks), dtype=torch.long, device=self.device)
        step_fn = self._step_fn(runner, batch, rows)

        for step in range(max_steps):
            column = sample(logits, pattern, params, steps, history)
            live = ~done
            columns[:, step] = column
            lengths += live.long()
            steps += 1
            ended = pattern.observe(column)
            done |= ((steps >= limits) if ignore_eos else (ended | (steps >= limits))) & live
            if step == num_codebooks:  # the first frame is complete once its last codebook is out
                self._sync()
                first_frame = time.perf_counter()
            history = torch.cat([history[:, 1:], column[:, None]], dim=1)
            if (step + 1) % self.check_every == 0:
                if bool(done.all()):
                    break
                yield columns, lengths
            if step + 1 < max_steps:
                logits = step_fn(column, positions.clamp(max=max_len - 1))
                positions += 1
        self._sync()
        finished = time.perf_counter()
        self.stats = GenerationStats(
            prefill_seconds=prefilled - started,
            first_frame_seconds=(first_frame if step >= num_codebooks else finished) - started,
            decode_seconds=finished - prefilled,
            steps=step + 1,
        )
        yield columns, lengths

    def _step_fn(self, runner: ModelRunner, batch: int, rows: int):
        """(column [batch, K], positions [batch]) -> logits [batch, K, V], run as a step of `rows` rows."""
        step = self._rows_step(runner, rows)
        if rows == batch:
            return step
        column_rows = torch.zeros((rows, runner.num_codebooks), dtype=torch.long, device=self.device)
        position_rows = torch.zeros(rows, dtype=torch.long, device=self.device)  # padding writes position 0

        def padded(column: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            column_rows[:batch] = column
            position_rows[:batch] = positions
            return step(column_rows, position_rows)[:batch]

        return padded

    def _rows_step(self, runner: ModelRunner, rows: int):
        if not self.use_cuda_graphs:
            cache = runner.cache(rows)
            return lambda column, positions: runner.decode_one_token(cache, column, positions)
        graphs = self._graphs.setdefault(runner.max_len, StepGraphs(runner))
        try:
            return graphs.step(rows)
        except RuntimeError as exc:  # a capture failure costs speed, not the request
            log.warning("CUDA graph capture failed (%s); running the decode step eagerly", exc)
            self.use_cuda_graphs = False
            return self._rows_step(runner, rows)
