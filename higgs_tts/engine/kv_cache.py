"""A static KV cache: one tensor per layer, one slot (batch row) per sequence.

Layout per layer: `[B, L, 2, Hkv, D]` (keys and values side by side at each position), so a
decode step writes a position's keys and values with one kernel, and the keys of a row are the
`[L, Hkv, D]` layout flash attention's varlen kernel reads in place.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    def __init__(self, layers: list[torch.Tensor], parent: StaticKVCache | None = None) -> None:
        self.layers = layers  # [B, L, 2, Hkv, D] each
        self.batch, self.max_len = layers[0].shape[0], layers[0].shape[1]
        device = layers[0].device
        if parent is None:
            self.rows = torch.arange(self.batch, device=device)
            # Varlen attention's offsets for one query per row and `max_len` keys per row.
            self._cu_q = torch.arange(self.batch + 1, device=device, dtype=torch.int32)
            self._cu_k = self._cu_q * self.max_len
            self._full_len = self.max_len
        else:
            # A view's index tensors are slices of the whole cache's: a captured graph reads them at
            # every replay, so they must live as long as the cache, not as long as the view.
            self.rows, self._cu_q, self._cu_k = parent.rows[:self.batch], parent._cu_q, parent._cu_k
            self._full_len = parent._full_len

    @classmethod
    def allocate(cls, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> StaticKVCache:
        shape = (batch, max_len, 2, kv_heads, head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)])

    def view(self, rows: int, length: int) -> StaticKVCache:
        """The first `rows` slots and `length` positions, sharing this cache's memory: a step that
        only needs that much reads (and attends over) no more."""
        return StaticKVCache([layer[:rows, :length] for layer in self.layers], self)

    def keys(self, layer: int) -> torch.Tensor:
        return self.layers[layer][:, :, 0]  # [B, L, Hkv, D]

    def values(self, layer: int) -> torch.Tensor:
        return self.layers[layer][:, :, 1]

    def cu_seq_q(self, rows: int) -> torch.Tensor:
        return self._cu_q[:rows + 1]

    def cu_seq_k(self, rows: int, length: int) -> torch.Tensor:
        assert length == self._full_len, "the varlen offsets are those of the whole cache's length"
        return self._cu_k[:rows + 1]

    def write(self, layer: int, positions: torch.Tensor, kv: torch.Tensor) -> None:
        """Write one new position per row: kv `[B, 2, Hkv, D]` at `positions[B]`."""
        self.layers[layer].index_put_((self.rows, positions), kv)
