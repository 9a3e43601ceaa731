"""A static KV cache: fixed-size tensors per layer, one slot (batch row) per sequence."""

from __future__ import annotations

import torch


class StaticKVCache:
    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], rows: torch.Tensor | None = None) -> None:
        self.keys, self.values = keys, values
        self.batch, self.max_len = keys[0].shape[0], keys[0].shape[2]
        self.rows = torch.arange(self.batch, device=keys[0].device) if rows is None else rows

    @classmethod
    def allocate(cls, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> StaticKVCache:
        shape = (batch, kv_heads, max_len, head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)])

    def view(self, rows: int, length: int) -> StaticKVCache:
        """The first `rows` slots and `length` positions, sharing this cache's memory: a step that
        only needs that much reads (and attends over) no more."""
        # The row index is a slice of this cache's own: a captured graph reads it at every replay,
        # so it must live as long as the cache, not as long as the view.
        return StaticKVCache([k[:rows, :, :length] for k in self.keys], [v[:rows, :, :length] for v in self.values],
                             self.rows[:rows])

    def fill_slot(self, slot: int, layer_keys: list[torch.Tensor], layer_values: list[torch.Tensor]) -> None:
        """Copy one prefilled sequence (`[1, kv_heads, L, head_dim]` per layer) into a slot."""
        length = layer_keys[0].shape[2]
        if length > self.max_len:
            raise ValueError(f"prompt of {length} positions does not fit a cache of {self.max_len}")
        for cache, new in zip(self.keys, layer_keys, strict=True):
            cache[slot, :, :length] = new[0]
        for cache, new in zip(self.values, layer_values, strict=True):
            cache[slot, :, :length] = new[0]

    def update(self, layer: int, positions: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        """Write one new position per row (`[B, kv_heads, 1, head_dim]` at `positions[B]`)."""
        self.keys[layer][self.rows, :, positions] = key[:, :, 0]
        self.values[layer][self.rows, :, positions] = value[:, :, 0]
        return self.keys[layer], self.values[layer]
