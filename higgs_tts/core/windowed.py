"""A conv stack's output over a long signal, computed in overlapping windows of a fixed size.

A stack of Conv1d layers with pointwise steps between them (activations, residual additions whose
skip reads no wider than its conv path) is local in time: output frame n reads only the input
samples `[n * stride - offset, n * stride - offset + span)`. So any run of frames can be computed
from a window of the signal that holds their samples, and the windows' frames, put end to end, are
the frames of the whole run, by the same arithmetic on the same samples, because:

- every window starts on the stack's stride grid, so its frame k is the whole run's frame
  `start // stride + k` and each layer sees the same sample phase;
- a frame is kept only where it reads no zero padding the whole run would not: its samples lie
  inside the window, or beyond the clip's own ends, where both runs pad alike.

They also round alike where each window takes the kernels the whole run takes (see `windows`): on
the CPU the DAC encoder's frames are the whole run's bit for bit. HuBERT's first-layer GroupNorm is
the exception: its statistics, summed over windows, differ from one pass's in the last bits.

Peak memory is then set by the window, not by the signal's duration. `windows()` does the cutting;
`feature_encoder_in_windows()` applies it to HuBERT's conv feature encoder, whose first layer may
normalize over the whole time axis (a GroupNorm) and so takes two passes.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Reach:
    """Which input samples each output frame of a chain of Conv1d layers reads (from their sizes)."""

    layers: tuple[tuple[int, int, int, int], ...]  # (kernel, stride, dilation, padding) in order

    @classmethod
    def of(cls, stack: nn.Module) -> Reach:
        """The Conv1d layers of `stack` in the order they are registered, which is the order they run in the
        codec's encoders (DAC's, HuBERT's feature encoder)."""
        convs = [m for m in stack.modules() if isinstance(m, nn.Conv1d)]
        for conv in convs:
            if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
                raise ValueError(f"{conv} pads in a way windows cannot follow")
        return cls(tuple((c.kernel_size[0], c.stride[0], c.dilation[0], c.padding[0]) for c in convs))

    @property
    def _jumps(self) -> list[int]:
        """Input samples between neighbouring positions of each layer's input: the strides before it."""
        return [math.prod(s for _, s, _, _ in self.layers[:i]) for i in range(len(self.layers))]

    @property
    def stride(self) -> int:
        """Input samples per output frame."""
        return math.prod(s for _, s, _, _ in self.layers)

    @property
    def offset(self) -> int:
        """How far before `n * stride` frame n's first sample lies: each layer's padding, in input samples."""
        return sum(p * jump for (_, _, _, p), jump in zip(self.layers, self._jumps, strict=True))

    @property
    def span(self) -> int:
        """The receptive field: input samples one frame reads (each layer widens it by its dilated kernel)."""
        return 1 + sum((k - 1) * d * jump for (k, _, d, _), jump in zip(self.layers, self._jumps, strict=True))

    def window_samples(self, window: int) -> int:
        """Input samples a full window of `window` samples reads: its frames' samples plus the overlap."""
        return (max(1, window // self.stride) - 1) * self.stride + self.span

    def frames(self, samples: int) -> int:
        """Output frames for `samples` input samples (Conv1d's length rule, layer by layer)."""
        for kernel, stride, dilation, padding in self.layers:
            samples = (samples + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        return samples


def windows(stack: Callable[[torch.Tensor], torch.Tensor], reach: Reach, signal: torch.Tensor,
            window: int) -> Iterator[torch.Tensor]:
    """`stack(signal)` as consecutive runs of frames along the last axis, each run computed from one window
    of `signal` [..., samples]: `window` samples (a whole number of strides) plus the overlap its outer frames
    need, `reach.span` samples. `stack` maps [..., samples] to [..., frames]."""
    samples, stride = signal.shape[-1], reach.stride
    total, per_window = reach.frames(samples), max(1, window // stride)
    # Every window is as long as a full one (or the whole signal), the first and last too: PyTorch picks some
    # kernels by input size (its CPU convolution takes oneDNN only above 20480 values), and windows round as
    # the whole signal does only where they take its kernels.
    full = reach.window_samples(window)
    if samples <= full:  # every window would be the whole signal: one run of it
        yield stack(signal)
        return
    for first in range(0, total, per_window):
        last = min(total, first + per_window)  # this window yields frames [first, last)
        # From frame `first`'s first sample (or earlier), on the stride grid, to frame `last - 1`'s last (or later)
        start = max(0, min(first * stride - reach.offset, samples - full) // stride * stride)
        end = min(samples, max(start + full, (last - 1) * stride - reach.offset + reach.span))
        out = stack(signal[..., start:end])
        skip = first - start // stride  # frames of the window before `first`
        if out.shape[-1] < skip + last - first:
            raise RuntimeError(f"window [{start}, {end}) gave {out.shape[-1]} frames, not {skip + last - first}")
        yield out[..., skip:skip + last - first]


def in_windows(stack: Callable[[torch.Tensor], torch.Tensor], reach: Reach, signal: torch.Tensor,
               window: int) -> torch.Tensor:
    """`stack(signal)`, computed in windows (see `windows`)."""
    return torch.cat(list(windows(stack, reach, signal, window)), dim=-1)


class _WindowedFeatureEncoder(nn.Module):
    """HuBERT's conv feature encoder (`HubertFeatureEncoder`, [B, samples] at 16 kHz to [B, conv_dim, frames]
    at 50 Hz) over the same layers, computed in windows of `window` samples.

    Its layers are conv -> (norm) -> activation. A LayerNorm there normalizes each frame over channels: local.
    A GroupNorm (`feat_extract_norm == "group"`, first layer only, as in HuBERT-base) normalizes each channel
    group over the whole time axis, so it takes two passes: the first layer's conv in windows for the group
    statistics (combined across windows in float64), then every window normalized with them.
    """

    def __init__(self, encoder: nn.Module, window: int) -> None:
        super().__init__()
        self.encoder, self.window = encoder, window

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        signal, reach = input_values[:, None], Reach.of(self.encoder)  # [B, 1, samples], as the encoder makes it
        if signal.shape[-1] <= reach.window_samples(self.window):
            return self.encoder(input_values)  # one window would be the whole clip: the encoder as it is
        first, *rest = self.encoder.conv_layers
        norm = getattr(first, "layer_norm", None)
        if any(isinstance(getattr(layer, "layer_norm", None), nn.GroupNorm) for layer in rest):
            raise ValueError("only the first feature encoder layer may normalize over time")
        if not isinstance(norm, nn.GroupNorm):
            return in_windows(self._layers, reach, signal, self.window)
        mean, scale, bias = self._group_norm_statistics(first.conv, norm, signal)

        def layers(window: torch.Tensor) -> torch.Tensor:
            # the GroupNorm with the whole clip's statistics; the mean taken off first, as GroupNorm does (folded
            # into one shift, a large mean beside a small spread would cancel digits away)
            hidden = first.activation((first.conv(window) - mean) * scale + bias)
            for layer in rest:
                hidden = layer(hidden)
            return hidden

        return in_windows(layers, reach, signal, self.window)

    def _layers(self, window: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder.conv_layers:
            window = layer(window)
        return window

    def _group_norm_statistics(self, conv: nn.Conv1d, norm: nn.GroupNorm,
                               signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`norm` over all of `conv(signal)` as `(x - mean) * scale + bias`, each [B, channels, 1]."""
        count, mean, m2 = 0, torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)  # on the CPU
        for piece in windows(conv, Reach.of(conv), signal, self.window):
            grouped = piece.unflatten(1, (norm.num_groups, -1)).flatten(2)  # [B, groups, channels/group * frames]
            piece_var, piece_mean = (s.double().cpu() for s in torch.var_mean(grouped, dim=-1, correction=0))
            # Chan et al.'s pairwise update of the mean and the sum of squared deviations
            n, delta = grouped.shape[-1], piece_mean - mean
            mean = mean + delta * n / (count + n)
            m2 = m2 + piece_var * n + delta.square() * count * n / (count + n)
            count += n
        rstd = (m2 / count + norm.eps).rsqrt()  # GroupNorm's biased variance
        per_group = norm.num_channels // norm.num_groups
        rstd, mean = rstd.repeat_interleave(per_group, dim=1), mean.repeat_interleave(per_group, dim=1)
        scale = rstd * norm.weight.double().cpu() if norm.affine else rstd
        bias = norm.bias.double().cpu().expand_as(scale) if norm.affine else torch.zeros_like(scale)
        return tuple(t[..., None].to(signal.device, signal.dtype) for t in (mean, scale, bias))


_SWAPPING = threading.Lock()  # the stand-in is set on the shared model: one encode at a time wears it


@contextlib.contextmanager
def feature_encoder_in_windows(hubert: nn.Module, window: int) -> Iterator[None]:
    """While open, `hubert` (a HubertModel) computes its conv features in windows of `window` samples: its
    forward has no way to take them precomputed, and its transformer (global attention), hidden state
    recording and everything after run as they are."""
    with _SWAPPING:
        encoder = hubert.feature_extractor
        hubert.feature_extractor = _WindowedFeatureEncoder(encoder, window)
        try:
            yield
        finally:
            hubert.feature_extractor = encoder

