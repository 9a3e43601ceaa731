"""The fused decode step against the model's own modules, and its weights as views of one buffer."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.higgs_audio_v2.modeling_higgs_audio_v2 import apply_rotary_pos_emb

from higgs_tts.core.checkpoint import load_model
from higgs_tts.engine.model_runner import ModelRunner, fused_layers

CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (graphs, flash attention)")


@pytest.fixture(scope="module")
def loaded(settings):
    return load_model(settings)


def unfused_step(model, keys, values, codes, positions):
    """The decode step written with the model's own modules, one operator at a time (the engine's
    step before fusion): keys/values `[B, Hkv, L, D]` per layer, updated in place."""
    decoder = model.model
    batch = codes.shape[0]
    head_dim = model.config.head_dim
    hidden = decoder.embed_audio_tokens(codes)[:, None, :]
    cos, sin = decoder.rotary_emb(hidden, positions[:, None])
    visible = (torch.arange(keys[0].shape[2]) <= positions[:, None])[:, None, None, :]
    rows = torch.arange(batch)
    for index, layer in enumerate(decoder.layers):
        attn = layer.self_attn
        x = layer.audio_input_layernorm(hidden)
        q = attn.q_proj(x).view(batch, 1, -1, head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, 1, -1, head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, 1, -1, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys[index][rows, :, positions] = k[:, :, 0]
        values[index][rows, :, positions] = v[:, :, 0]
        out = F.scaled_dot_product_attention(q, keys[index], values[index], attn_mask=visible, scale=attn.scaling,
                                             enable_gqa=True)
        hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, 1, -1))
        hidden = hidden + layer.audio_mlp(layer.audio_post_attention_layernorm(hidden))
    logits = model.audio_lm_head(decoder.norm(hidden)[:, 0])
    return logits.float().view(batch, model.config.num_codebooks, model.config.codebook_size)


@torch.inference_mode()
def test_fused_step_equals_the_unfused_one(loaded):
    model = loaded.model
    config = model.config
    runner = ModelRunner(model, 64)
    cache = runner.allocate_cache(3)
    generator = torch.Generator().manual_seed(0)
    for layer in cache.layers:  # a history to attend over
        layer.copy_(torch.randn(layer.shape, generator=generator))
    keys = [layer[:, :, 0].transpose(1, 2).clone() for layer in cache.layers]
    values = [layer[:, :, 1].transpose(1, 2).clone() for layer in cache.layers]
    for step in range(4):
        codes = torch.randint(0, config.codebook_size, (3, config.num_codebooks), generator=generator)
        positions = torch.tensor([5, 17, 40]) + step
        want = unfused_step(model, keys, values, codes, positions)
        got = runner.decode_one_token(cache, codes, positions)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    for index in range(len(keys)):  # the KV writes agree too
        assert torch.allclose(cache.keys(index).transpose(1, 2), keys[index], atol=1e-6)
        assert torch.allclose(cache.values(index).transpose(1, 2), values[index], atol=1e-6)


def test_concatenated_weights_are_views_of_one_buffer(loaded):
    model = loaded.model
    before = sum(p.numel() for p in model.parameters())
    layers = fused_layers(model)
    assert fused_layers(model) is layers  # once per model
    for layer, fused in zip(model.model.layers, layers, strict=True):
        attn, mlp = layer.self_attn, layer.audio_mlp
        storage = fused.qkv.untyped_storage().data_ptr()
        assert all(p.weight.untyped_storage().data_ptr() == storage for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        assert torch.equal(fused.qkv[: attn.q_proj.weight.shape[0]], attn.q_proj.weight)
        assert mlp.up_proj.weight.untyped_storage().data_ptr() == fused.gate_up.untyped_storage().data_ptr()
    assert sum(p.numel() for p in model.parameters()) == before  # nothing stored twice


@CUDA_ONLY
@torch.inference_mode()
def test_flash_attention_over_the_padded_cache_equals_sdpa(settings):
    from higgs_tts.engine.batch import _flash_works
    from higgs_tts.tools.tiny_checkpoint import full_size_random_model

    loaded = full_size_random_model("cuda", "bfloat16")
    runner = ModelRunner(loaded.model, 512)
    if not _flash_works(runner):
        pytest.skip("flash attention's varlen kernel is not available on this GPU")
    cache = runner.allocate_cache(4)
    for layer in cache.layers[:1]:
        layer.normal_()
    q = torch.randn(4, runner.q_heads, runner.head_dim, dtype=runner.dtype, device="cuda")
    positions = torch.tensor([0, 7, 300, 511], device="cuda")
    visible = (torch.arange(512, device="cuda") <= positions[:, None])[:, None, None, :]
    want = runner.attention(q, cache, 0, None, visible)
    runner.use_flash = True
    got = runner.attention(q, cache, 0, (positions + 1).to(torch.int32), None)
    assert torch.allclose(got.float(), want.float(), atol=2e-2, rtol=2e-2)
