"""The model on the engine's terms: prefill with the model's own layers (several prompts packed
into one pass), and the audio decode step written out as few kernels as torch's own operators allow.

An audio step only needs attention, the audio-side norms and MLPs ("DualFFN") and the audio head.
Per layer (13 kernels on CPU and CUDA, counted by `higgs-tts bench --anatomy`):

    rms_norm -> qkv GEMM -> RoPE over q, k and v at once (3) -> one KV write -> attention
    -> o_proj GEMM + residual (addmm) -> rms_norm -> gate|up GEMM -> silu, mul
    -> down GEMM + residual (addmm)

The concatenated weights (q|k|v, gate|up) are one buffer per layer, and the model's own
`q_proj.weight` etc. become views of it: the model's forward (prefill) still works and no weight
is stored twice.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv_cache import StaticKVCache
from .prefix_cache import BLOCK, PrefixCache, prompt_blocks

log = logging.getLogger(__name__)

PREFILL_PACK_TOKENS = 4096  # new prompt tokens one packed prefill runs at most (a longer prompt runs alone)
CPU_PREFILL_PACK = 1  # on a CPU: each prompt alone (a GEMM over more rows may round otherwise)


@dataclass
class FusedLayer:
    """One decoder layer's audio path, as the step reads it."""

    input_norm: torch.Tensor  # [H]
    qkv: torch.Tensor  # [(Hq + 2 Hkv) D, H]: a view source of q_proj, k_proj, v_proj weights
    qkv_bias: torch.Tensor | None  # [(Hq + 2 Hkv) D]
    o_proj: torch.Tensor  # [H, Hq D]
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor  # [H]
    gate_up: torch.Tensor  # [2 I, H]: a view source of audio_mlp gate_proj and up_proj weights
    down: torch.Tensor  # [H, I]
    eps: float


@dataclass
class _Prompt:
    """A prompt's host-side plan: positions hit..length-1 are run into `slot`."""

    slot: int
    hit: int  # positions its prefix from the prefix cache holds
    length: int
    new_ids: torch.Tensor  # [S'] host
    new_audio: torch.Tensor  # [S'] bool host: which new positions are audio
    frames: torch.Tensor | None  # [A', K] on the device: the new audio positions' codes
    blocks: list[bytes]  # its prefix-cache keys

    @property
    def count(self) -> int:
        return self.length - self.hit


_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its fused layers


def _join(linears: list[torch.nn.Linear], attribute: str) -> torch.Tensor | None:
    """Concatenate the linears' weights (or biases) into one buffer; each module's parameter
    becomes a view of it, so the old storage is freed and nothing is stored twice."""
    parts = [getattr(m, attribute) for m in linears]
    if parts[0] is None:
        return None
    joined = torch.cat([p.detach() for p in parts])
    offset = 0
    for part in parts:
        rows = part.shape[0]
        part.data = joined[offset:offset + rows]
        offset += rows
    return joined


def fused_layers(model) -> list[FusedLayer]:
    """The model's layers with concatenated weights; done once per model, shared by every runner."""
    if model in _FUSED:
        return _FUSED[model]
    layers = []
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.audio_mlp
            projections = [attn.q_proj, attn.k_proj, attn.v_proj]
            if mlp.act_fn.__class__.__name__ not in ("SiLU", "SiLUActivation"):
                raise ValueError(f"the decode step implements SiLU MLPs, not {mlp.act_fn.__class__.__name__}")
            layers.append(FusedLayer(
                input_norm=layer.audio_input_layernorm.weight,
                qkv=_join(projections, "weight"),
                qkv_bias=_join(projections, "bias"),
                o_proj=attn.o_proj.weight,
                o_bias=attn.o_proj.bias,
                post_norm=layer.audio_post_attention_layernorm.weight,
                gate_up=_join([mlp.gate_proj, mlp.up_proj], "weight"),
                down=mlp.down_proj.weight,
                eps=layer.audio_input_layernorm.variance_epsilon,
            ))
    _FUSED[model] = layers
    return layers


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias) (+ residual), one GEMM kernel (addmm adds the residual in its epilogue)."""
    if residual is None:
        return F.linear(x, weight, bias)
    if bias is not None:
        residual = residual + bias
    return residual.addmm_(x, weight.t())  # in place: out of place, addmm first copies the residual


class ModelRunner:
    def __init__(self, model, max_len: int, prefix_cache: PrefixCache | None = None) -> None:
        self.model = model
        self.prefix_cache = prefix_cache
        self.prefilled_tokens = 0  # of the last prefill (the rest came from the prefix cache)
        self.config = config = model.config
        self.decoder = model.model
        self.layers = fused_layers(model)
        self.num_codebooks = config.num_codebooks
        self.codebook_size = config.codebook_size
        self.head_dim = config.head_dim
        self.q_heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.hidden_size = config.hidden_size
        self.max_len = max_len
        device = model.device
        dtype = next(model.parameters()).dtype
        self.dtype, self.device = dtype, device
        # RoPE tables for every position, from the model's own rotary embedding: [max_len, D].
        positions = torch.arange(max_len, device=device)[None]
        cos, sin = self.decoder.rotary_emb(torch.zeros(1, dtype=dtype, device=device), positions)
        half = self.head_dim // 2
        # rotate_half(x) = cat(-x2, x1) = roll(x, D/2) * [-1 (first half), +1 (second half)]:
        # the sign lives in the sin table, so RoPE is mul, roll, addcmul.
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(device=device, dtype=dtype)
        self.cos, self.sin = cos[0], sin[0] * sign  # [max_len, D]
        # The v heads ride along through RoPE unchanged: cos 1, sin 0.
        heads = self.q_heads + 2 * self.kv_heads
        self.rotated = (torch.arange(heads, device=device) < self.q_heads + self.kv_heads)[None, :, None]  # [1, H, 1]
        self.offsets = self.decoder.embed_audio_tokens.audio_tokens_offsets  # [K]
        self.embedding = self.decoder.embed_audio_tokens.embed_audio_tokens.weight  # [K V, H]
        self.final_norm = self.decoder.norm.weight
        self.final_eps = self.decoder.norm.variance_epsilon
        self.head = model.audio_lm_head.weight  # [K V, H]
        self.scaling = self.decoder.layers[0].self_attn.scaling
        self.audio_ids = (config.audio_token_id, config.audio_delay_token_id)  # a prompt's audio positions
        self.use_flash = False  # set by the batch once the varlen kernel has been tried on this device

    def allocate_cache(self, batch: int) -> StaticKVCache:
        return StaticKVCache.allocate(len(self.layers), batch, self.kv_heads, self.max_len, self.head_dim,
                                      self.dtype, self.device)

    @torch.inference_mode()
    def prefill(self, inputs: dict[str, torch.Tensor], cache: StaticKVCache, slot: int) -> torch.Tensor:
        """One prompt into `slot`: `prefill_many` with a list of one; the last logits `[K, V]`."""
        return self.prefill_many([(inputs, slot)], cache)[0]

    @torch.inference_mode()
    def prefill_many(self, items: list[tuple[dict[str, torch.Tensor], int]], cache: StaticKVCache,
                     pack_tokens: int = PREFILL_PACK_TOKENS) -> list[torch.Tensor]:
        """Run each prompt into its slot, after its longest prefix in the prefix cache; returns each
        prompt's last logits `[K, V]`.

        The prompts' new tokens run packed, up to `pack_tokens` of them a pass (a longer prompt runs
        alone): one pass over the weights serves them all. Static shapes throughout: what depends on
        the prompts' content (which positions are audio, how many tokens the cache already holds)
        is worked out on the host from one copy of every prompt's ids and codes, and sent back in
        one copy per pack; the forward itself never waits for the device.
        """
        prompts = self._host_prompts(items)
        plans = [self._plan(inputs, slot, ids, codes, cache) for (inputs, slot), (ids, codes) in
                 zip(items, prompts, strict=True)]
        packs: list[list[_Prompt]] = [[]]
        for plan in plans:
            if packs[-1] and sum(p.count for p in packs[-1]) + plan.count > pack_tokens:
                packs.append([])
            packs[-1].append(plan)
        logits = [row for pack in packs for row in self._prefill_pack(pack, cache)]
        self.prefilled_tokens = sum(p.count for p in plans)
        return logits

    def _host_prompts(self, items) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every prompt's ids `[S]` and audio codes `[A, K]` on the host, in one copy (a host sync)."""
        parts = []
        for inputs, _ in items:
            parts.append(inputs["input_ids"][0])
            audio = inputs.get("audio_input_ids")
            if audio is not None:
                parts.append(audio[0].reshape(-1))
        host = torch.cat(parts).to("cpu", copy=True)
        prompts, offset = [], 0
        for inputs, _ in items:
            length = inputs["input_ids"].shape[1]
            ids, offset = host[offset:offset + length], offset + length
            audio = inputs.get("audio_input_ids")
            frames = 0 if audio is None else audio.shape[1]
            codes = host[offset:offset + frames * self.num_codebooks].view(frames, self.num_codebooks)
            prompts.append((ids, codes))
            offset += frames * self.num_codebooks
        return prompts

    def _plan(self, inputs, slot: int, ids: torch.Tensor, codes: torch.Tensor, cache: StaticKVCache) -> _Prompt:
        """A prompt's host-side work: its prefix from the prefix cache (copied into its slot), and
        which of its new positions are audio."""
        length = ids.shape[0]
        is_audio = torch.isin(ids, torch.tensor(self.audio_ids))  # [S] host
        blocks, hit = [], 0
        if self.prefix_cache is not None:
            blocks = prompt_blocks(ids, codes, is_audio)
            # At least one token is left to run: its logits are the first step's.
            hit, cached = self.prefix_cache.lookup(blocks, limit=(length - 1) // BLOCK)
            for layer, kv in zip(cache.layers, cached, strict=False):
                layer[slot, :hit] = kv
        skipped = int(is_audio[:hit].sum())  # audio positions in the cached prefix (host)
        new_audio = is_audio[hit:]
        audio = inputs.get("audio_input_ids")
        frames = audio[0, skipped:skipped + int(new_audio.sum())] if audio is not None else None  # [A', K]
        return _Prompt(slot, hit, length, ids[hit:], new_audio, frames, blocks)

    def _prefill_pack(self, pack: list[_Prompt], cache: StaticKVCache) -> list[torch.Tensor]:
        """One pass over the weights for the packed new tokens of `pack` (`[sum S', H]`)."""
        starts, start = [], 0
        for p in pack:
            starts.append(start)
            start += p.count
        total = start
        # The host's plan for the packed tokens: ids, which are audio, where each path's rows are,
        # each token's position, each prompt's last row: one copy to the device.
        new_audio = torch.cat([p.new_audio for p in pack])
        audio_rows, text_rows = new_audio.nonzero()[:, 0], (~new_audio).nonzero()[:, 0]
        positions = torch.cat([torch.arange(p.hit, p.length) for p in pack])
        lasts = torch.tensor([s + p.count - 1 for s, p in zip(starts, pack, strict=True)])
        plan = torch.cat([torch.cat([p.new_ids for p in pack]), new_audio.long(), audio_rows, text_rows, positions,
                          lasts]).to(self.device, copy=True)  # one copy
        audio_count = audio_rows.shape[0]
        new_ids, audio_mask = plan[:total], plan[total:2 * total].bool()
        audio_rows = plan[2 * total:2 * total + audio_count]
        text_rows = plan[2 * total + audio_count:3 * total]
        positions, lasts = plan[3 * total:4 * total], plan[4 * total:]

        hidden = self.decoder.embed_tokens(new_ids)  # [T, H]
        if audio_count:
            frames = torch.cat([p.frames for p in pack if p.frames is not None])  # [A', K]
            hidden.index_copy_(0, audio_rows, F.embedding_bag(frames + self.offsets, self.embedding, mode="sum"))
        rope = self.cos[positions][:, None, :], self.sin[positions][:, None, :]  # [T, 1, D]
        # Each prompt's causal mask over its slot's positions 0..S-1: [S', S]
        spans = [(start, p.slot, p.hit, p.length, torch.arange(p.length, device=self.device) <=
                  torch.arange(p.hit, p.length, device=self.device)[:, None])
                 for start, p in zip(starts, pack, strict=True)]
        for index, (layer, w) in enumerate(zip(self.decoder.layers, self.layers, strict=True)):
            hidden = self._prefill_layer(layer, w, hidden, cache.layers[index], spans, rope, audio_mask, audio_rows,
                                         text_rows)
        if self.prefix_cache is not None:
            for p in pack:
                self.prefix_cache.store(p.blocks, [layer[p.slot, :p.length] for layer in cache.layers])
        last = F.rms_norm(hidden.index_select(0, lasts), (self.hidden_size,), self.final_norm, self.final_eps)
        return list(F.linear(last, self.head).float().view(len(pack), self.num_codebooks, self.codebook_size))

    def _prefill_layer(self, layer, w: FusedLayer, hidden: torch.Tensor, kv: torch.Tensor, spans: list,
                       rope: tuple[torch.Tensor, torch.Tensor], audio_mask: torch.Tensor,
                       audio_rows: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
        """One decoder layer over packed prompt tokens (hidden `[T, H]`), text tokens through the
        text norms and MLP, audio positions through the audio ones, as the model's forward does.
        Per prompt (`spans`: its first packed row, slot, positions hit..S-1 and causal mask), keys
        and values go into its slot of `kv` (`[B, L, 2, Hkv, D]`) and attention reads that slot."""
        count, size = hidden.shape
        audio_mask = audio_mask[:, None]
        x = torch.where(audio_mask, F.rms_norm(hidden, (size,), w.input_norm, w.eps),
                        layer.input_layernorm(hidden))
        qkv = _linear(x, w.qkv, w.qkv_bias).view(count, -1, self.head_dim)  # [T, Hq + 2 Hkv, D]
        q = qkv[:, :self.q_heads]
        k = qkv[:, self.q_heads:self.q_heads + self.kv_heads]
        v = qkv[:, self.q_heads + self.kv_heads:]
        cos, sin = rope
        k = k * cos + k.roll(self.head_dim // 2, dims=-1) * sin
        q = q * cos + q.roll(self.head_dim // 2, dims=-1) * sin
        groups = self.q_heads // self.kv_heads
        outs = []
        for first, slot, start, end, visible in spans:
            rows = slice(first, first + end - start)
            kv[slot, start:end, 0] = k[rows]
            kv[slot, start:end, 1] = v[rows]
            keys, values = kv[slot, :end, 0].transpose(0, 1), kv[slot, :end, 1].transpose(0, 1)  # [Hkv, S, D]
            # The query heads that share a KV head become that head's rows ([Hkv, G S', D], the mask
            # repeated per group): GQA without repeating K/V, and a mask the fused kernels take.
            n = end - start
            grouped = q[rows].view(n, self.kv_heads, groups, self.head_dim).permute(1, 2, 0, 3)
            out = F.scaled_dot_product_attention(grouped.reshape(1, self.kv_heads, groups * n, self.head_dim),
                                                 keys[None], values[None], attn_mask=visible.repeat(groups, 1),
                                                 scale=self.scaling)  # [1, Hkv, G S', D]
            outs.append(out.view(self.kv_heads, groups, n, self.head_dim).permute(2, 0, 1, 3).reshape(n, -1))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        hidden = _linear(out, w.o_proj, w.o_bias, residual=hidden)
        x = torch.where(audio_mask, F.rms_norm(hidden, (size,), w.post_norm, w.eps),
                        layer.post_attention_layernorm(hidden))
        out = torch.empty_like(hidden)
        if text_rows.shape[0]:
            out.index_copy_(0, text_rows, layer.mlp(x.index_select(0, text_rows)))
        if audio_rows.shape[0]:
            gate, up = F.linear(x.index_select(0, audio_rows), w.gate_up).chunk(2, dim=-1)
            out.index_copy_(0, audio_rows, F.linear(F.silu(gate) * up, w.down))
        return hidden + out

    def rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin `[B, Hq + 2 Hkv, D]` for the rows' positions: the RoPE of q and k, identity for v."""
        cos = torch.where(self.rotated, self.cos[positions][:, None, :], 1.0)
        sin = torch.where(self.rotated, self.sin[positions][:, None, :], 0.0)
        return cos, sin

    def attention(self, q: torch.Tensor, cache: StaticKVCache, index: int, lengths: torch.Tensor | None,
                  visible: torch.Tensor | None) -> torch.Tensor:
        """q `[B, Hq, D]` against the cached keys and values of layer `index` -> `[B, Hq D]`: over
        `lengths` `[B]` (int32) live positions per row with flash attention, else where `visible`."""
        batch = q.shape[0]
        keys, values = cache.keys(index), cache.values(index)  # [B, L, Hkv, D], strided
        if self.use_flash:
            # Per-row live lengths, native GQA, no mask: flash attention's varlen kernel over the
            # padded cache (row b's keys start at b L; seqused_k says how many are live).
            length = keys.shape[1]
            out = torch.ops.aten._flash_attention_forward(
                q, keys.reshape(batch * length, self.kv_heads, self.head_dim),
                values.reshape(batch * length, self.kv_heads, self.head_dim),
                cache.cu_seq_q(batch), cache.cu_seq_k(batch, length), 1, length, 0.0, False, False,
                scale=self.scaling, seqused_k=lengths)[0]
            return out.reshape(batch, -1)
        # The query heads that share a KV head become that head's query rows ([B, Hkv, G, D]):
        # the same attention as GQA, without repeating K/V.
        grouped = q.view(batch, self.kv_heads, -1, self.head_dim)
        out = F.scaled_dot_product_attention(grouped, keys.transpose(1, 2), values.transpose(1, 2),
                                             attn_mask=visible, scale=self.scaling)
        return out.reshape(batch, -1)

    def layer(self, w: FusedLayer, hidden: torch.Tensor, cache: StaticKVCache, index: int, positions: torch.Tensor,
              rope: tuple[torch.Tensor, torch.Tensor], lengths: torch.Tensor | None,
              visible: torch.Tensor | None) -> torch.Tensor:
        """One decoder layer for one audio token per row: hidden `[B, H]` -> `[B, H]`."""
        batch, size = hidden.shape
        x = F.rms_norm(hidden, (size,), w.input_norm, w.eps)
        qkv = _linear(x, w.qkv, w.qkv_bias).view(batch, -1, self.head_dim)  # [B, Hq + 2 Hkv, D]
        cos, sin = rope
        qkv = torch.addcmul(qkv * cos, qkv.roll(self.head_dim // 2, dims=-1), sin)
        cache.write(index, positions, qkv[:, self.q_heads:].view(batch, 2, self.kv_heads, self.head_dim))
        out = self.attention(qkv[:, :self.q_heads], cache, index, lengths, visible)
        hidden = _linear(out, w.o_proj, w.o_bias, residual=hidden)
        x = F.rms_norm(hidden, (size,), w.post_norm, w.eps)
        gate, up = F.linear(x, w.gate_up).chunk(2, dim=-1)
        return hidden.addmm_(F.silu(gate) * up, w.down.t())

    def decode_one_token(self, cache: StaticKVCache, codes: torch.Tensor, positions: torch.Tensor,
                         lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[B, K, V]` (float32) for the next column, given each row's last column `[B, K]`
        and its position `[B]`. The cache may be a view of the first positions: attention reads
        only those; with flash attention, only each row's `lengths` (default: position + 1)."""
        batch = codes.shape[0]
        # The audio embedding is the sum of the codebooks' embeddings: one embedding_bag.
        hidden = F.embedding_bag(codes + self.offsets, self.embedding, mode="sum")  # [B, H]
        rope = self.rope_tables(positions)
        visible = None
        if self.use_flash:
            lengths = (positions + 1 if lengths is None else lengths).to(torch.int32)  # once per step
        else:
            visible = (torch.arange(cache.max_len, device=codes.device) <= positions[:, None])[:, None, None, :]
        for index, w in enumerate(self.layers):
            hidden = self.layer(w, hidden, cache, index, positions, rope, lengths, visible)
        hidden = F.rms_norm(hidden, (self.hidden_size,), self.final_norm, self.final_eps)
        logits = F.linear(hidden, self.head)
        return logits.float().view(batch, self.num_codebooks, self.codebook_size)
