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


def generated_frames(columns: torch.Tensor, bos: int = STREAM_BOS, eos: int = STREAM_EOS) -> torch.Tensor:
    """Frames from the columns a generation produced (starting with its all-BOS column).

    Stops at the first all-EOS column; a stream cut short by the token limit keeps the frames
    whose every codebook was generated. Stray BOS/EOS values are clipped into the codebook.
    """
    if columns.shape[0] == 0:
        return columns
    if bool((columns[0] == bos).all()):
        columns = columns[1:]
    ended = (columns == eos).all(dim=1).nonzero()
    if len(ended):
        columns = columns[: int(ended[0])]
    return undelay(columns).clamp(0, bos - 1)
