"""Sampling on the device: delay-pattern forcing, temperature, top-k, top-p, RAS.

Every rule mirrors the reference path (transformers' Higgs Audio V2 `generate()`), so greedy
decoding gives identical codes. Random draws use Gumbel-max with counter-based noise keyed by
(seed, step, codebook, code): a request's seed alone decides its samples, whatever else shares
the batch, and no generator state lives on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..core.codes import STREAM_BOS, STREAM_EOS

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finalizer on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, stream: int, num_codebooks: int,
                 vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise `[B, K, V]`, a pure function of (seed, step, stream, codebook, code)."""
    device = seeds.device
    row = _mix32((_mix32(seeds & _MASK32) ^ (steps * 2 + stream)) & _MASK32)  # [B]
    cells = torch.arange(num_codebooks * vocab, device=device, dtype=torch.int64).view(1, num_codebooks, vocab)
    bits = _mix32((row.view(-1, 1, 1) * 0x9E3779B1 + cells) & _MASK32)
    uniform = (bits.to(torch.float64) + 0.5) / 4294967296.0
    return -torch.log(-torch.log(uniform)).to(torch.float32)


@dataclass
class SamplingTensors:
    """Per-row sampling settings, as tensors on the device."""

    greedy: torch.Tensor  # [B] bool
    temperature: torch.Tensor  # [B] float (1 where greedy)
    top_k: torch.Tensor  # [B] long (vocab size = disabled)
    top_p: torch.Tensor  # [B] float (1 = disabled)
    ras_len: torch.Tensor  # [B] long (0 = disabled)
    ras_max: torch.Tensor  # [B] long
    seeds: torch.Tensor  # [B] long

    @classmethod
    def build(cls, params: list, seeds: list[int], vocab: int, device: torch.device) -> SamplingTensors:
        def t(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device)

        return cls(
            greedy=t([p.greedy for p in params], torch.bool),
            temperature=t([1.0 if p.greedy else p.temperature for p in params], torch.float32),
            top_k=t([vocab if p.top_k == 0 else min(p.top_k, vocab) for p in params], torch.long),
            top_p=t([p.top_p for p in params], torch.float32),
            ras_len=t([p.ras_win_len if p.ras_enabled else 0 for p in params], torch.long),
            ras_max=t([p.ras_win_max_num_repeat for p in params], torch.long),
            seeds=t(seeds, torch.long),
        )

    @classmethod
    def empty(cls, rows: int, device: torch.device) -> SamplingTensors:
        """Settings for `rows` slots, to be filled by `set_row` as sequences join."""
        dtypes = {"greedy": torch.bool, "temperature": torch.float32, "top_p": torch.float32}
        return cls(**{f.name: torch.ones(rows, dtype=dtypes.get(f.name, torch.long), device=device)
                      for f in fields(cls)})

    def set_row(self, row: int, other: SamplingTensors) -> None:
        """Row `row` takes the settings of `other`'s only row (a sequence joining the batch)."""
        for f in fields(self):
            getattr(self, f.name)[row] = getattr(other, f.name)[0]

    def rows(self, count: int) -> SamplingTensors:
        """Views of the first `count` rows."""
        return SamplingTensors(**{f.name: getattr(self, f.name)[:count] for f in fields(self)})


class DelayPattern:
    """Which codebooks are forced to stream BOS or EOS at each step, per row.

    Codebook k is forced to BOS for the first k + 1 steps (the first column is all BOS). Once a
    column holds an EOS, the stream is ending: j steps later codebooks 0..j-1 are forced to EOS,
    so the last column is all EOS.
    """

    def __init__(self, batch: int, num_codebooks: int, device: torch.device) -> None:
        self.codebooks = torch.arange(num_codebooks, device=device)
        self.ending = torch.zeros(batch, dtype=torch.bool, device=device)
        self.ended_steps = torch.zeros(batch, dtype=torch.long, device=device)

    def reset_row(self, row: int) -> None:
        self.ending[row] = False
        self.ended_steps[row] = 0

    def rows(self, count: int) -> DelayPattern:
        """A pattern over the first `count` rows, sharing this one's state."""
        view = DelayPattern.__new__(DelayPattern)
        view.codebooks, view.ending, view.ended_steps = self.codebooks, self.ending[:count], self.ended_steps[:count]
        return view

    def apply(self, logits: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        self.ended_steps += self.ending.long()
        force_bos = self.codebooks[None, :] >= steps[:, None]
        force_eos = self.codebooks[None, :] < self.ended_steps[:, None]
        vocab = torch.arange(logits.shape[-1], device=logits.device)
        logits = logits.masked_fill(force_bos[:, :, None] & (vocab != STREAM_BOS), float("-inf"))
        return logits.masked_fill(force_eos[:, :, None] & (vocab != STREAM_EOS), float("-inf"))

    def observe(self, column: torch.Tensor) -> torch.Tensor:
        """Record a sampled column `[B, K]`; returns which rows just finished (all EOS)."""
        self.ending |= (column == STREAM_EOS).any(dim=1)
        return (column == STREAM_EOS).all(dim=1)


def warp(logits: torch.Tensor, s: SamplingTensors) -> torch.Tensor:
    """Temperature, then top-k, then top-p per codebook, as transformers' warpers do."""
    scores = logits / s.temperature[:, None, None]
    descending = scores.sort(dim=-1, descending=True).values
    kth = descending.gather(-1, (s.top_k - 1).view(-1, 1, 1).expand(-1, scores.shape[1], 1))
    scores = scores.masked_fill(scores < kth, float("-inf"))

    ascending, order = scores.sort(dim=-1, stable=True)  # ties keep code order on every device
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - s.top_p)[:, None, None]
    remove[..., -1] = False
    remove = remove.scatter(-1, order, remove)
    return scores.masked_fill(remove & (s.top_p < 1.0)[:, None, None], float("-inf"))


def sample(logits: torch.Tensor, pattern: DelayPattern, s: SamplingTensors, steps: torch.Tensor,
           history: torch.Tensor) -> torch.Tensor:
    """The next column `[B, K]` from raw logits `[B, K, V]`.

    `history` `[B, W, K]` holds each row's latest audio columns (newest last) for repetition-aware
    sampling: a code seen `ras_max` times in the last `ras_len` columns is drawn again from the raw
    distribution.
    """
    batch, num_codebooks, vocab = logits.shape
    masked = pattern.apply(logits, steps)
    scores = warp(masked, s)
    noise = gumbel_noise(s.seeds, steps, 0, num_codebooks, vocab)
    sampled = (scores + noise).argmax(dim=-1)
    column = torch.where(s.greedy[:, None], masked.argmax(dim=-1), sampled)

    window = history.shape[1]
    recent = torch.arange(window, device=logits.device)[None, :] >= (window - s.ras_len)[:, None]  # [B, W]
    counted = (history != STREAM_BOS) & (history != STREAM_EOS) & recent[:, :, None]
    repeats = ((history == column[:, None, :]) & counted).sum(dim=1)
    resample = (s.ras_len > 0)[:, None] & (repeats >= s.ras_max[:, None])
    redrawn = (logits + gumbel_noise(s.seeds, steps, 1, num_codebooks, vocab)).argmax(dim=-1)
    return torch.where(resample, redrawn, column)
