"""The decode loop over the slots of one static KV cache.

    admit(sequence, slot):  prefill the prompt with the model's own forward into the slot
    burst():                check_every times: sample a column on the device for every row ->
                            decode_one_token -> logits; then one host sync to hand the columns out

Rows are slots. A sequence joins between bursts and leaves when it ends; the other rows do not
notice, because every operation is row-wise and random draws are keyed by (seed, step). The step
runs over the first `rows` slots (a bucket that covers every occupied slot) and attends over the
first `length` positions (a bucket that covers every position the burst can reach), so a short
batch neither computes nor reads what it does not need.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from ..core.codes import STREAM_BOS
from .graphs import StepGraphs
from .model_runner import ModelRunner
from .sampler import DelayPattern, SamplingTensors, sample
from .sequence import Sequence

log = logging.getLogger(__name__)

LENGTH_BUCKET = 512  # attended lengths are rounded up to this, so graphs are reused
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # graph row counts: 5 occupied slots run as 8 rows


def padded_batch(batch: int) -> int:
    """The bucket a batch runs in (itself when above the largest)."""
    return next((b for b in BATCH_BUCKETS if b >= batch), batch)


def bucket_length(positions: int, max_len: int | None = None) -> int:
    """`positions` rounded up to LENGTH_BUCKET (at most `max_len`)."""
    length = -(-positions // LENGTH_BUCKET) * LENGTH_BUCKET
    return length if max_len is None else min(max_len, length)


@dataclass
class BurstResult:
    columns: torch.Tensor  # [rows, check_every, K] on the host
    counts: list[int]  # live columns per row in this burst
    done: list[bool]  # per row: ended (EOS or max_new_tokens)


class Batch:
    def __init__(self, model, capacity: int, max_len: int, check_every: int = 16,
                 use_cuda_graphs: bool = False, pad_rows: bool = False) -> None:
        self.runner = ModelRunner(model, max_len)
        self.capacity, self.max_len, self.check_every = capacity, max_len, check_every
        self.use_cuda_graphs, self.pad_rows = use_cuda_graphs, pad_rows
        device, runner = self.runner.device, self.runner
        self.device = device
        self.num_codebooks, vocab = runner.num_codebooks, runner.codebook_size
        self.cache = runner.allocate_cache(capacity)
        self.graphs = StepGraphs(runner, self.cache) if use_cuda_graphs else None

        def zeros(dtype, *shape):
            return torch.zeros((capacity, *shape), dtype=dtype, device=device)

        self.logits = zeros(torch.float32, self.num_codebooks, vocab)
        self.positions, self.steps, self.limits = zeros(torch.long), zeros(torch.long), zeros(torch.long)
        self.done, self.ignore_eos = zeros(torch.bool), zeros(torch.bool)
        self.counts = zeros(torch.long)
        self.columns = zeros(torch.long, check_every, self.num_codebooks)
        self.history = torch.full((capacity, 1, self.num_codebooks), STREAM_BOS, dtype=torch.long, device=device)
        self.params = SamplingTensors.empty(capacity, device)
        self.pattern = DelayPattern(capacity, self.num_codebooks, device)
        self.sequences: dict[int, Sequence] = {}  # slot -> sequence

    # -- joining and leaving --------------------------------------------------------------------

    def free_slots(self) -> list[int]:
        return [s for s in range(self.capacity) if s not in self.sequences]

    @torch.inference_mode()
    def admit(self, sequence: Sequence, slot: int) -> None:
        """Prefill `sequence` into `slot`; it samples its first column in the next burst."""
        if sequence.needed_len > self.max_len:
            raise ValueError(f"a prompt of {sequence.prompt_len} positions plus max_new_tokens "
                             f"{sequence.max_new_tokens} does not fit a cache of {self.max_len}")
        request = sequence.request
        self.logits[slot] = self.runner.prefill(request.inputs, self.cache, slot)
        self.positions[slot] = sequence.prompt_len
        self.steps[slot] = 0
        self.limits[slot] = sequence.max_new_tokens
        self.done[slot] = False
        self.ignore_eos[slot] = sequence.ignore_eos
        self.params.set_row(slot, SamplingTensors.build([request.params], [request.seed],
                                                        self.runner.codebook_size, self.device))
        self.pattern.reset_row(slot)
        self._set_history(slot, request)
        self.sequences[slot] = sequence

    def _set_history(self, slot: int, request) -> None:
        """RAS looks back into the prompt's audio, as the reference does."""
        needed = max(request.params.ras_win_len, 1)
        window = self.history.shape[1]
        if needed > window:  # widen for everyone; older columns on the left stay BOS
            grown = torch.full((self.capacity, needed, self.num_codebooks), STREAM_BOS, dtype=torch.long,
                               device=self.device)
            grown[:, needed - window:] = self.history
            self.history, window = grown, needed
        self.history[slot] = STREAM_BOS
        prompt_audio = request.inputs.get("audio_input_ids")
        if prompt_audio is not None:
            tail = prompt_audio[0, -window:]
            self.history[slot, window - tail.shape[0]:] = tail

    def release(self, slot: int) -> Sequence:
        return self.sequences.pop(slot)

    # -- the loop -------------------------------------------------------------------------------

    def row_counts(self) -> list[int]:
        """Every row count a burst can run with."""
        if not self.pad_rows:
            return list(range(1, self.capacity + 1))
        return sorted({min(self.capacity, b) for b in BATCH_BUCKETS if b < self.capacity} | {self.capacity})

    def capture_all(self) -> int:
        """Capture the step for every (rows, length) a burst can use, before serving: a capture
        mid-burst would stall every stream. Returns the number of graphs."""
        if self.graphs is None:
            return 0
        lengths = range(LENGTH_BUCKET, self.max_len + LENGTH_BUCKET, LENGTH_BUCKET)
        for rows in self.row_counts():
            for length in lengths:
                self._step_fn(rows, min(length, self.max_len))
                if self.graphs is None:  # capture failed: eager from here on
                    return 0
        return len(self.graphs._graphs)

    def _step_fn(self, rows: int, length: int):
        """(column [rows, K], positions [rows]) -> logits [rows, K, V] over `length` positions."""
        if self.graphs is not None:
            try:
                return self.graphs.step(rows, length)
            except RuntimeError as exc:  # a capture failure costs speed, not the request
                log.warning("CUDA graph capture failed (%s); running the decode step eagerly", exc)
                self.graphs = None
        view = self.cache.view(rows, length)
        return lambda column, positions: self.runner.decode_one_token(view, column, positions)

    def _shape(self) -> tuple[int, int]:
        occupied = max(self.sequences) + 1
        rows = min(self.capacity, padded_batch(occupied)) if self.pad_rows else occupied
        furthest = max(s.position for s in self.sequences.values()) + self.check_every + 1
        return rows, bucket_length(furthest, self.max_len)

    @torch.inference_mode()
    def burst(self, mark_step: int | None = None) -> BurstResult:
        """`check_every` decode steps for every occupied slot, then one host sync.

        With `mark_step`, the device is synchronized after that step and the time is returned in
        `self.marked_at` (the benchmark's time to the first complete frame).
        """
        rows, length = self._shape()
        step_fn = self._step_fn(rows, length)
        params, pattern = self.params.rows(rows), self.pattern.rows(rows)
        logits, positions, steps = self.logits[:rows], self.positions[:rows], self.steps[:rows]
        done, limits, ignore, counts = self.done[:rows], self.limits[:rows], self.ignore_eos[:rows], self.counts[:rows]
        occupied = torch.zeros(rows, dtype=torch.bool, device=self.device)
        occupied[list(self.sequences)] = True
        counts.zero_()
        history = self.history[:rows]
        for i in range(self.check_every):
            column = sample(logits, pattern, params, steps, history)
            live = occupied & ~done
            self.columns[:rows, i] = column
            counts += live.long()
            steps += 1
            ended = pattern.observe(column)
            done |= ((steps >= limits) | (ended & ~ignore)) & live
            history = torch.cat([history[:, 1:], column[:, None]], dim=1)
            if i == mark_step:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.marked_at = time.perf_counter()
            logits.copy_(step_fn(column, positions.clamp(max=length - 1)))
            positions += 1
        self.history[:rows] = history
        return BurstResult(columns=self.columns[:rows].cpu(), counts=counts.tolist(), done=done.tolist())

    def take(self, result: BurstResult) -> list[tuple[int, Sequence, torch.Tensor, bool]]:
        """Per occupied slot: (slot, sequence, its new columns, whether it ended). Ended and
        cancelled sequences are released here, so their slots are free for the next admission."""
        taken = []
        for slot, sequence in list(self.sequences.items()):
            columns = result.columns[slot, : result.counts[slot]].clone()
            sequence.generated += int(columns.shape[0])
            ended = result.done[slot] or sequence.cancelled.is_set()
            if ended:
                self.release(slot)
            taken.append((slot, sequence, columns, ended))
        return taken
