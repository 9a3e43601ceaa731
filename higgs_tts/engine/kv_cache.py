"""A static KV cache: fixed-size tensors per layer, one slot (batch row) per sequence."""

from __future__ import annotations

import torch


class StaticKVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.rows = torch.arange(batch, device=device)

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
