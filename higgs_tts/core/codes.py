"""Audio codes and the delay pattern the language model reads and writes (docs/model-facts.md, section 1).

Frames are `[T, num_codebooks]` tensors of codec codes (0..1023). The model sees a clip wrapped
in one all-BOS and one all-EOS column and delayed so that codebook k lags k positions: T frames
occupy T + 2 + (num_codebooks - 1) positions.
"""

from __future__ import annotations

import torch

STREAM_BOS = 1024
STREAM_EOS = 1025


def delay_frames(frames: torch.Tensor, bos: int = STREAM_BOS, eos: int = STREAM_EOS) -> torch.Tensor:
    """Wrap `[T, K]` frames in BOS/EOS columns and apply the delay pattern: `[T + 1 + K, K]`."""
    num_frames, num_codebooks = frames.shape
    wrapped = torch.cat(
        [frames.new_full((1, num_codebooks), bos), frames, frames.new_full((1, num_codebooks), eos)]
    )
    length = num_frames + 2 + num_codebooks - 1
    out = frames.new_empty((length, num_codebooks))
    for k in range(num_codebooks):
        out[:k, k] = bos
        out[k : k + num_frames + 2, k] = wrapped[:, k]
        out[k + num_frames + 2 :, k] = eos
    return out


def undelay(columns: torch.Tensor) -> torch.Tensor:
    """Undo the delay pattern of `[L, K]` columns (without the leading BOS column): `[L - K + 1, K]`."""
    length, num_codebooks = columns.shape
    frames = length - num_codebooks + 1
    if frames <= 0:
        return columns.new_empty((0, num_codebooks))
    return torch.stack([columns[k : k + frames, k] for k in range(num_codebooks)], dim=1)


def stream_ended(columns: torch.Tensor, eos: int = STREAM_EOS) -> bool:
    """Whether the model ended the stream: an EOS in any codebook of any column (upstream's rule)."""
    return bool((columns == eos).any())


def generated_frames(columns: torch.Tensor, bos: int = STREAM_BOS, eos: int = STREAM_EOS) -> torch.Tensor:
    """Frames from the columns a generation produced (starting with its all-BOS column), as upstream
    keeps them (docs/upstream-fidelity.md): the stream up to the column where upstream's loop ends it,
    delay reverted, then the first (BOS) and the last (EOS) frame dropped; codes clipped into 0..bos-1.

    Upstream ends a stream K - 1 - k columns after the first column holding an EOS, k being the lowest
    codebook with an EOS there; anything our loops generate after that (an all-EOS column when
    codebook 7 was late) is ignored. A stream cut by the token limit loses its last frame too, as
    upstream's. Growing `columns` only ever adds frames at the end, so streaming can send them early.
    """
    num_codebooks = columns.shape[1]
    if columns.shape[0] == 0:
        return columns
    if not bool((columns[0] == bos).all()):
        columns = torch.cat([columns.new_full((1, num_codebooks), bos), columns])
    ended = (columns == eos).any(dim=1).nonzero()
    if len(ended):
        first = int(ended[0])
        lowest = int((columns[first] == eos).nonzero()[0])
        columns = columns[: first + num_codebooks - lowest]
    return undelay(columns)[1:-1].clamp(0, bos - 1)
