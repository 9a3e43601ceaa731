"""Sampling on the device, inside the captured step: delay pattern, temperature, top-k, top-p, RAS.

Every rule mirrors the `generate()` path (transformers' Higgs Audio V2 `generate()`), so greedy
decoding gives identical codes. Random draws use Gumbel-max with counter-based noise keyed by
(seed, step, codebook, rank): a request's seed alone decides its samples, whatever else shares
the batch, and no generator state lives on the host. All state is in static buffers, so the
sampler is part of the one captured program of a decode step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..core.codes import STREAM_BOS, STREAM_EOS

_MASK32 = 0xFFFFFFFF
NO_LIMIT = 2**62  # a RAS threshold no window reaches: RAS off
TOP_P_OFF = 2.0  # a top-p no cumulative probability reaches: nucleus sampling off


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finalizer on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Two Gumbel(0, 1) draws `[2, B, K, V]` (float32), a pure function of (seed, step, cell):
    16 bits of one 32-bit hash each, computed once per step. `cells` is `arange(K V).view(1, K, V)`."""
    row = _mix32((_mix32(seeds & _MASK32) ^ steps) & _MASK32)  # [B]
    bits = _mix32((row.view(-1, 1, 1) * 0x9E3779B1 + cells) & _MASK32)  # [B, K, V]
    halves = torch.stack([bits >> 16, bits & 0xFFFF])  # [2, B, K, V]
    uniform = (halves.float() + 0.5) * (1.0 / 65536)
    return -torch.log(-torch.log(uniform))


@dataclass
class SamplingTensors:
    """Per-row sampling settings, as tensors on the device."""

    greedy: torch.Tensor  # [B] bool
    temperature: torch.Tensor  # [B] float (1 where greedy)
    top_k: torch.Tensor  # [B] long (vocab size = disabled)
    top_p: torch.Tensor  # [B] float (TOP_P_OFF = disabled)
    ras_len: torch.Tensor  # [B] long (0 = disabled)
    ras_max: torch.Tensor  # [B] long (NO_LIMIT = disabled)
    seeds: torch.Tensor  # [B] long

    @classmethod
    def empty(cls, rows: int, device: torch.device) -> SamplingTensors:
        """Settings for `rows` slots, to be filled by `set_row` as sequences join."""
        dtypes = {"greedy": torch.bool, "temperature": torch.float32, "top_p": torch.float32}
        return cls(**{f.name: torch.ones(rows, dtype=dtypes.get(f.name, torch.long), device=device)
                      for f in fields(cls)})

    def write_row(self, row: int, params, seed: int, vocab: int) -> None:
        """Row `row` takes `params` and `seed`: one host-to-device copy for all seven settings
        (float64 holds every value exactly: seeds < 2**31, NO_LIMIT a power of two)."""
        values = torch.tensor([
            params.greedy, 1.0 if params.greedy else params.temperature,
            vocab if params.top_k == 0 else min(params.top_k, vocab),
            params.top_p if params.top_p < 1.0 else TOP_P_OFF,
            params.ras_win_len if params.ras_enabled else 0,
            params.ras_win_max_num_repeat if params.ras_enabled else NO_LIMIT, seed,
        ], dtype=torch.float64).to(self.seeds.device, copy=True)
        for index, f in enumerate(fields(self)):
            target = getattr(self, f.name)
            target[row] = values[index].to(target.dtype)

    def rows(self, count: int) -> SamplingTensors:
        """Views of the first `count` rows."""
        return SamplingTensors(**{f.name: getattr(self, f.name)[:count] for f in fields(self)})


def forced_codes(steps: torch.Tensor, ended_steps: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """The delay pattern `[B, K]`: the code a cell is forced to, or -1.

    Codebook k is forced to BOS for the first k + 1 steps (the first column is all BOS). Once a
    column holds an EOS, the stream is ending: j steps later codebooks 0..j-1 are forced to EOS,
    so the last column is all EOS.
    """
    eos = torch.where(codebooks < ended_steps[:, None], STREAM_EOS, -1)
    return torch.where(codebooks >= steps[:, None], STREAM_BOS, eos)


def warp(logits: torch.Tensor, s: SamplingTensors, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature, top-k, then top-p per codebook, as transformers' warpers: (scores in rank
    order `[B, K, V]`, -inf where filtered; the code at each rank `[B, K, V]`). `ranks` is `arange(V)`.

    One descending sort serves both filters: top-k keeps the first k ranks, and top-p removes a
    rank when the probability of everything ranked above it already reaches p (transformers'
    ascending form, mirrored).
    """
    scores, order = (logits / s.temperature[:, None, None]).sort(dim=-1, descending=True, stable=True)
    scores = scores.masked_fill(ranks >= s.top_k[:, None, None], float("-inf"))
    probs = scores.softmax(dim=-1)
    above = probs.cumsum(dim=-1) - probs  # the probability ranked above each rank
    return scores.masked_fill(above >= s.top_p[:, None, None], float("-inf")), order


def draw(logits: torch.Tensor, s: SamplingTensors, noise: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """A Gumbel-max draw from the warped distribution: codes `[B, K]`. The noise is indexed by
    rank, which is as random as by code."""
    scores, order = warp(logits, s, ranks)
    return order.gather(-1, (scores + noise).argmax(dim=-1, keepdim=True))[..., 0]


def sample(logits: torch.Tensor, forced: torch.Tensor, s: SamplingTensors, noise: torch.Tensor,
           history: torch.Tensor, recent: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """The next column `[B, K]` from raw logits `[B, K, V]`.

    `forced` is the delay pattern (`forced_codes`). `history` `[B, W, K]` holds each row's latest
    audio codes (newest last, -1 for BOS/EOS and empty) and `recent` `[B, W]` marks each row's RAS
    window in it: a code seen `ras_max` times there is drawn again from the raw distribution.
    """
    column = torch.where(s.greedy[:, None], logits.argmax(dim=-1), draw(logits, s, noise[0], ranks))
    repeats = ((history == column[:, None, :]) & recent[:, :, None]).sum(dim=1)
    redrawn = (logits + noise[1]).argmax(dim=-1)
    column = torch.where(repeats >= s.ras_max[:, None], redrawn, column)
    return torch.where(forced >= 0, forced, column)
