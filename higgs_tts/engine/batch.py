"""The decode loop over the slots of one static KV cache.

    admit_many(joining):    prefill the joining prompts into their slots, packed into one pass
                            over the weights where packing is on (CUDA)
    launch():               `steps_per_sync` decode steps for every occupied slot, then one
                            device-to-host copy of the burst's columns (an event marks it)
    collect(burst):         wait for that copy (the only host sync of a burst) and hand out

One decode step is one program: sample a column from the last logits (delay pattern, warpers,
RAS, counter-based noise), record it and every row's progress, then run the model on it for the
next logits. Every input and output lives in a static buffer, so on CUDA the whole step, sampler
included, is one captured graph; on a CPU the same function runs eagerly.

Rows are slots. A sequence joins between bursts and leaves when it ends; the other rows do not
notice, because every operation is row-wise and random draws are keyed by (seed, step). The step
runs over the first `rows` slots (a bucket that covers every occupied slot) and attends over the
first `length` positions (a bucket that covers every position the burst can reach), so a short
batch neither computes nor reads what it does not need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.codes import STREAM_BOS, STREAM_EOS
from .graphs import StepGraphs
from .model_runner import CPU_PREFILL_PACK, PREFILL_PACK_TOKENS, ModelRunner
from .prefix_cache import PrefixCache
from .sampler import SamplingTensors, forced_codes, gumbel_noise, sample
from .sequence import Sequence

log = logging.getLogger(__name__)

LENGTH_BUCKET = 512  # attended lengths are rounded up to this, so graphs are reused
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # graph row counts: 5 occupied slots run as 8 rows
RAS_WINDOW = 16  # history columns kept for RAS; widened (and graphs recaptured) for a longer window
EMPTY = -1  # a history cell that holds no audio code (BOS, EOS, nothing yet): never a repeat


def padded_batch(batch: int) -> int:
    """The bucket a batch runs in (itself when above the largest)."""
    return next((b for b in BATCH_BUCKETS if b >= batch), batch)


def bucket_length(positions: int, max_len: int | None = None) -> int:
    """`positions` rounded up to LENGTH_BUCKET (at most `max_len`)."""
    length = -(-positions // LENGTH_BUCKET) * LENGTH_BUCKET
    return length if max_len is None else min(max_len, length)


@dataclass
class Burst:
    """A launched burst: its rows' owners at launch, and its columns on their way to the host."""

    rows: int
    owners: dict[int, Sequence]  # slot -> the sequence that occupied it when the burst was launched
    host: torch.Tensor  # [rows, steps_per_sync * K + 2] long: columns, then count, then done
    ready: torch.cuda.Event | None  # recorded after the copy; None on a CPU (the copy is done)
    columns: torch.Tensor  # [rows, steps_per_sync, K]: a view of `host`, read by each sequence's reader


class Batch:
    def __init__(self, model, capacity: int, max_len: int, steps_per_sync: int = 16, use_cuda_graphs: bool = False,
                 pad_rows: bool = False, prefix_cache: PrefixCache | None = None,
                 pack_tokens: int | None = None) -> None:
        self.runner = runner = ModelRunner(model, max_len, prefix_cache)
        # New tokens a packed prefill runs at once; 1 prefills each sequence alone (a CPU's default:
        # a GEMM over more rows may round otherwise, and a request's audio is the same alone or in a crowd).
        self.pack_tokens = pack_tokens or (PREFILL_PACK_TOKENS if runner.device.type == "cuda" else CPU_PREFILL_PACK)
        self.capacity, self.max_len, self.steps_per_sync = capacity, max_len, steps_per_sync
        self.pad_rows = pad_rows
        self.device = device = runner.device
        self.num_codebooks, vocab = runner.num_codebooks, runner.codebook_size
        self.cache = runner.allocate_cache(capacity)
        if device.type == "cuda":
            runner.use_flash = _flash_works(runner)

        def zeros(dtype, *shape):
            return torch.zeros((capacity, *shape), dtype=dtype, device=device)

        K, S = self.num_codebooks, steps_per_sync
        # -- the static state every step reads and writes -------------------------------------
        self.logits = zeros(torch.float32, K, vocab)  # [B, K, V]: the last step's, sampled next
        self.positions, self.steps, self.limits = zeros(torch.long), zeros(torch.long), zeros(torch.long)
        self.done, self.ignore_eos, self.occupied = zeros(torch.bool), zeros(torch.bool), zeros(torch.bool)
        self.ending, self.ended_steps = zeros(torch.bool), zeros(torch.long)  # delay pattern: EOS seen, steps since
        self.history = torch.full((capacity, RAS_WINDOW, K), EMPTY, dtype=torch.long, device=device)  # [B, W, K]
        self.recent = zeros(torch.bool, RAS_WINDOW)  # [B, W]: each row's RAS window
        self.params = SamplingTensors.empty(capacity, device)
        # What a burst hands out, packed for one copy: [B, S K + 2] = columns [B, S, K], count, done.
        self.packed = zeros(torch.long, S * K + 2)
        self.columns = self.packed[:, :S * K].view(capacity, S, K)
        self.counts, self.done_out = self.packed[:, S * K], self.packed[:, S * K + 1]
        self.index = torch.zeros(1, dtype=torch.long, device=device)  # the step within the burst
        # -- constants ------------------------------------------------------------------------
        self.codebooks = torch.arange(K, device=device)
        self.cells = torch.arange(K * vocab, device=device).view(1, K, vocab)
        self.ranks = torch.arange(vocab, device=device)

        self.graphs = StepGraphs(self) if use_cuda_graphs else None
        self.sequences: dict[int, Sequence] = {}  # slot -> sequence

    # -- joining and leaving --------------------------------------------------------------------

    def free_slots(self) -> list[int]:
        return [s for s in range(self.capacity) if s not in self.sequences]

    def admit(self, sequence: Sequence, slot: int) -> None:
        """Prefill `sequence` into `slot`; it samples its first column in the next burst."""
        self.admit_many([(sequence, slot)])

    @torch.inference_mode()
    def admit_many(self, joining: list[tuple[Sequence, int]]) -> None:
        """Prefill every sequence into its slot, packed (`pack_tokens` new tokens a pass) where
        packing is on, else one by one; they sample their first columns in the next burst."""
        for sequence, _ in joining:
            if sequence.needed_len > self.max_len:
                raise ValueError(f"a prompt of {sequence.prompt_len} positions plus max_new_tokens "
                                 f"{sequence.max_new_tokens} does not fit a cache of {self.max_len}")
        self._fit_window(max(sequence.request.params.ras_win_len for sequence, _ in joining))
        packs = [joining] if self.pack_tokens > 1 else [[item] for item in joining]
        for pack in packs:
            logits = self.runner.prefill_many([(s.request.inputs, slot) for s, slot in pack], self.cache,
                                              self.pack_tokens)
            for (sequence, slot), row in zip(pack, logits, strict=True):
                self.logits[slot] = row
                self._start_row(sequence, slot)

    def _start_row(self, sequence: Sequence, slot: int) -> None:
        """The row's settings and state for a prefilled `sequence`."""
        request = sequence.request
        row = slice(slot, slot + 1)  # a one-element slice: fill_ takes the value as an argument, no copy
        self.positions[row].fill_(sequence.prompt_len)
        self.steps[row].fill_(0)
        self.limits[row].fill_(sequence.max_new_tokens)
        self.done[row].fill_(False)
        self.ignore_eos[row].fill_(sequence.ignore_eos)
        self.ending[row].fill_(False)
        self.ended_steps[row].fill_(0)
        self.params.write_row(slot, request.params, request.seed, self.runner.codebook_size)
        window = self.history.shape[1]
        ras_len = request.params.ras_win_len if request.params.ras_enabled else 0
        self.recent[slot] = torch.arange(window, device=self.device) >= window - ras_len
        # RAS looks back into the prompt's audio, as the generate() path does.
        self.history[row].fill_(EMPTY)
        prompt_audio = request.inputs.get("audio_input_ids")
        if prompt_audio is not None:
            tail = prompt_audio[0, -window:]
            self.history[slot, window - tail.shape[0]:] = torch.where(tail >= STREAM_BOS, EMPTY, tail)
        self.occupied[row].fill_(True)
        self.sequences[slot] = sequence

    def _fit_window(self, needed: int) -> None:
        """Widen the RAS history for everyone (new cells on the left are empty): new buffers, so
        the captured steps are captured again."""
        window = self.history.shape[1]
        if needed <= window:
            return
        history = torch.full((self.capacity, needed, self.num_codebooks), EMPTY, dtype=torch.long, device=self.device)
        history[:, needed - window:] = self.history
        recent = torch.zeros((self.capacity, needed), dtype=torch.bool, device=self.device)
        recent[:, needed - window:] = self.recent
        self.history, self.recent = history, recent
        if self.graphs is not None:
            log.info("RAS window widened to %d columns: the decode step is captured again", needed)
            self.graphs = StepGraphs(self)

    def release(self, slot: int) -> Sequence:
        self.occupied[slot:slot + 1].fill_(False)
        return self.sequences.pop(slot)

    # -- one decode step --------------------------------------------------------------------------

    def state(self) -> list[torch.Tensor]:
        """Every buffer a step writes, but the KV cache (a capture saves and restores these)."""
        return [self.logits, self.positions, self.steps, self.done, self.ending, self.ended_steps, self.history,
                self.packed, self.index]

    def make_step(self, rows: int, length: int) -> Callable[[], None]:
        """The decode step over the first `rows` slots, attending over `length` positions: a
        function of the static buffers alone (what a CUDA graph captures)."""
        runner = self.runner
        view = self.cache.view(rows, self.max_len if runner.use_flash else length)
        logits, positions, steps, limits = self.logits[:rows], self.positions[:rows], self.steps[:rows], \
            self.limits[:rows]
        done, ignore, occupied = self.done[:rows], self.ignore_eos[:rows], self.occupied[:rows]
        ending, ended_steps = self.ending[:rows], self.ended_steps[:rows]
        history, recent, params = self.history[:rows], self.recent[:rows], self.params.rows(rows)
        columns, counts, done_out, index = self.columns[:rows], self.counts[:rows], self.done_out[:rows], self.index
        codebooks, cells, ranks, steps_per_sync = self.codebooks, self.cells, self.ranks, self.steps_per_sync

        def step() -> None:
            # sample: delay pattern [B, K], noise [2, B, K, V], column [B, K]
            ended_steps.add_(ending)
            forced = forced_codes(steps, ended_steps, codebooks)
            noise = gumbel_noise(params.seeds, steps, cells)
            column = sample(logits, forced, params, noise, history, recent, ranks)
            # record: the column, and each row's progress
            live = occupied & ~done
            columns.index_copy_(1, index, column[:, None])
            counts.add_(live)
            steps.add_(1)
            eos = column == STREAM_EOS
            ending.logical_or_(eos.any(dim=1))
            done.logical_or_(((steps >= limits) | (eos.all(dim=1) & ~ignore)) & live)
            done_out.copy_(done)
            history.copy_(torch.cat([history[:, 1:], torch.where(column >= STREAM_BOS, EMPTY, column)[:, None]], 1))
            # run: the model on the column, for the next step's logits (idle rows attend to 1 position)
            lengths = torch.where(occupied & ~done, positions + 1, 1) if runner.use_flash else None
            logits.copy_(runner.decode_one_token(view, column, positions.clamp(max=length - 1), lengths))
            positions.add_(1)
            index.add_(1).remainder_(steps_per_sync)  # a step run outside a burst never writes out of bounds

        return step

    def _step_fn(self, rows: int, length: int) -> Callable[[], None]:
        if self.graphs is not None:
            try:
                return self.graphs.step(rows, length)
            except RuntimeError as exc:
                # A capture failure costs speed, not the request. (torch raises every CUDA error of a capture as
                # an AcceleratorError, so a lost context cannot be told apart here: the eager step that follows
                # meets it, and the scheduler ends the process then.)
                log.warning("CUDA graph capture failed (%s); running the decode step eagerly, with SDPA", exc)
                self.graphs = None
                self.runner.use_flash = False  # in case flash attention was what failed
        return self.make_step(rows, length)

    # -- the loop -------------------------------------------------------------------------------

    def row_counts(self) -> list[int]:
        """Every row count a burst can run with."""
        if not self.pad_rows:
            return list(range(1, self.capacity + 1))
        return sorted({min(self.capacity, b) for b in BATCH_BUCKETS if b < self.capacity} | {self.capacity})

    @torch.inference_mode()
    def capture_all(self) -> int:
        """Capture the step for every (rows, length) a burst can use, before serving: a capture
        mid-burst would stall every stream. Returns the number of graphs."""
        if self.graphs is None:
            return 0
        lengths = [self.max_len] if self.runner.use_flash else \
            range(LENGTH_BUCKET, self.max_len + LENGTH_BUCKET, LENGTH_BUCKET)
        for rows in self.row_counts():
            for length in lengths:
                self._step_fn(rows, min(length, self.max_len))
                if self.graphs is None:  # capture failed: eager from here on
                    return 0
        return len(self.graphs)

    def shape(self) -> tuple[int, int]:
        """(rows, length) of the next burst."""
        occupied = max(self.sequences) + 1
        rows = min(self.capacity, padded_batch(occupied)) if self.pad_rows else occupied
        if self.runner.use_flash:  # per-row live lengths: no length buckets
            return rows, self.max_len
        furthest = max(s.position for s in self.sequences.values()) + self.steps_per_sync + 1
        return rows, bucket_length(furthest, self.max_len)

    @torch.inference_mode()
    def launch(self) -> Burst:
        """`steps_per_sync` steps for every occupied slot, and the copy of their columns to the host."""
        rows, length = self.shape()
        step = self._step_fn(rows, length)
        self.index.zero_()
        self.counts[:rows].zero_()
        for _ in range(self.steps_per_sync):
            step()
        for sequence in self.sequences.values():  # where the burst leaves them, for the next shape
            sequence.launched += self.steps_per_sync
        # A copy even on a CPU (the next burst overwrites `packed`); pinned, and not waited for, on CUDA.
        host = self.packed[:rows].to("cpu", non_blocking=True, copy=True)
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event(blocking=True)  # the host sleeps on it rather than spinning a core
            ready.record(torch.cuda.current_stream(self.device))
        columns = host[:, :self.steps_per_sync * self.num_codebooks].view(rows, self.steps_per_sync, -1)
        return Burst(rows, dict(self.sequences), host, ready, columns)

    def collect(self, burst: Burst) -> list[tuple[int, Sequence, int, bool]]:
        """Per sequence the burst ran: (slot, sequence, how many new columns it has in
        `burst.columns[slot]`, whether it ended). Ended and cancelled sequences are released here,
        so their slots are free for the next admission. No tensor is touched per row: each reader
        slices its own columns on its own thread."""
        if burst.ready is not None:
            burst.ready.synchronize()  # the burst's one host sync
        S, K = self.steps_per_sync, self.num_codebooks
        counts, done = burst.host[:, S * K].tolist(), burst.host[:, S * K + 1].tolist()
        taken = []
        for slot, sequence in burst.owners.items():
            if self.sequences.get(slot) is not sequence:  # ended in an earlier burst
                continue
            count = counts[slot]
            sequence.generated += count
            ended = done[slot] == 1 or sequence.cancelled.is_set()
            if ended:
                self.release(slot)
            taken.append((slot, sequence, count, ended))
        return taken


def _flash_works(runner: ModelRunner) -> bool:
    """Whether flash attention's varlen kernel runs here and agrees with SDPA over the engine's own
    cache length (bf16/fp16 on a GPU that has it); otherwise attention stays SDPA over a length
    bucket with a mask. Draws from a generator of its own: the global RNG is left alone."""
    if runner.dtype not in (torch.bfloat16, torch.float16):
        return False
    from .kv_cache import StaticKVCache

    length, device = runner.max_len, runner.device
    generator = torch.Generator(device=device).manual_seed(0)
    try:
        cache = StaticKVCache.allocate(1, 3, runner.kv_heads, length, runner.head_dim, runner.dtype, device)
        cache.layers[0].normal_(generator=generator)
        q = torch.randn(3, runner.q_heads, runner.head_dim, dtype=runner.dtype, device=device, generator=generator)
        positions = torch.tensor([0, length // 3, length - 1], device=device)
        visible = (torch.arange(length, device=device) <= positions[:, None])[:, None, None, :]
        runner.use_flash = False
        want = runner.attention(q, cache, 0, None, visible)
        runner.use_flash = True
        got = runner.attention(q, cache, 0, (positions + 1).to(torch.int32), None)
        return bool(torch.allclose(got.float(), want.float(), atol=2e-2, rtol=2e-2))
    except (RuntimeError, NotImplementedError) as exc:
        log.info("flash attention's varlen kernel is not available here (%s); using SDPA", exc)
        return False
    finally:
        runner.use_flash = False
