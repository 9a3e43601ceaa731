"""Prefill with the model's own forward; the audio decode step written out by hand.

An audio step only needs attention, the audio-side norms and MLPs ("DualFFN") and the audio head;
the step below runs exactly those, on the weights of the loaded transformers model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.models.higgs_audio_v2.modeling_higgs_audio_v2 import apply_rotary_pos_emb

from .kv_cache import StaticKVCache


class ModelRunner:
    def __init__(self, model, max_len: int) -> None:
        self.model = model
        self.config = model.config
        self.decoder = model.model
        self.num_codebooks = self.config.num_codebooks
        self.codebook_size = self.config.codebook_size
        device = model.device
        dtype = next(model.parameters()).dtype
        # RoPE tables for every position, from the model's own rotary embedding.
        positions = torch.arange(max_len, device=device)[None]
        probe = torch.zeros(1, dtype=dtype, device=device)
        cos, sin = self.decoder.rotary_emb(probe, positions)
        self.cos, self.sin = cos[0], sin[0]  # [max_len, head_dim]
        self.max_len = max_len
        self.head_dim = self.config.head_dim
        self.dtype, self.device = dtype, device

    def allocate_cache(self, batch: int) -> StaticKVCache:
        c = self.config
        return StaticKVCache.allocate(c.num_hidden_layers, batch, c.num_key_value_heads, self.max_len, c.head_dim,
                                      self.dtype, self.device)

    @torch.inference_mode()
    def prefill(self, inputs: dict[str, torch.Tensor], cache: StaticKVCache, slot: int) -> torch.Tensor:
        """Run the prompt through the model's forward into `slot`; returns the last logits `[K, V]`."""
        dynamic = DynamicCache(config=self.config)
        out = self.model(**inputs, past_key_values=dynamic, use_cache=True, logits_to_keep=1)
        cache.fill_slot(slot, [layer.keys for layer in dynamic.layers], [layer.values for layer in dynamic.layers])
        return out.logits[0, -1].float().view(self.num_codebooks, self.codebook_size)

    @torch.inference_mode()
    def decode_one_token(self, cache: StaticKVCache, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits `[B, K, V]` (float32) for the next column, given each row's last column `[B, K]`."""
        batch = codes.shape[0]
        hidden = self.decoder.embed_audio_tokens(codes)[:, None, :]  # sum of the codebooks' embeddings
        cos = self.cos[positions][:, None, :]
        sin = self.sin[positions][:, None, :]
        # The cache may be a view of the first positions: attention reads only those.
        visible = (torch.arange(cache.max_len, device=codes.device)[None, :] <= positions[:, None])[:, None, None, :]
        for index, layer in enumerate(self.decoder.layers):
            attn = layer.self_attn
            x = layer.audio_input_layernorm(hidden)
            q = attn.q_proj(x).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys, values = cache.update(index, positions, k, v)
            # The query heads that share a KV head become that head's query rows ([B, Hkv, G, D]):
            # the same attention as GQA, without repeating K/V, and a shape the fused kernels take.
            grouped = q.reshape(batch, keys.shape[1], -1, self.head_dim)
            out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=visible, scale=attn.scaling)
            hidden = hidden + attn.o_proj(out.reshape(batch, 1, -1))
            hidden = hidden + layer.audio_mlp(layer.audio_post_attention_layernorm(hidden))
        hidden = self.decoder.norm(hidden)
        logits = self.model.audio_lm_head(hidden[:, 0])
        return logits.float().view(batch, self.num_codebooks, self.codebook_size)
