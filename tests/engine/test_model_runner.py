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


def packed_prompts(loaded):
    """Three prompts of different lengths: plain text, a cloned voice (audio positions), and one
    whose voice's prefix the prefix cache holds (after `warm`)."""
    from higgs_tts.core.prompt import PromptRenderer, PromptVoice, build_prompt

    renderer = PromptRenderer(loaded.processor)

    def voice(seed: int) -> PromptVoice:
        codes = torch.randint(0, 1024, (150, 8), generator=torch.Generator().manual_seed(seed))
        return PromptVoice(description="d", transcript="Twas the night before.", frames=codes, is_clone=True)

    def prompt(text, voices):
        return renderer.inputs(build_prompt(text, transcript=text, voices=voices, scene=""))

    warm = prompt("An earlier request.", [voice(1)])
    return warm, [prompt("Hello there.", []), prompt("A cloned voice speaks.", [voice(0)]),
                  prompt("The cached voice again, with other words.", [voice(1)])]


@torch.inference_mode()
@pytest.mark.parametrize("pack_tokens", [4096, 200], ids=["one-pack", "split"])
def test_a_packed_prefill_equals_each_prompt_alone(loaded, pack_tokens):
    from higgs_tts.engine.prefix_cache import PrefixCache

    warm, prompts = packed_prompts(loaded)
    lengths = [int(p["input_ids"].shape[1]) for p in prompts]
    runs = []
    for packed in (False, True):
        runner = ModelRunner(loaded.model, 1024, PrefixCache(2**30))
        cache = runner.allocate_cache(4)
        runner.prefill(warm, cache, 3)  # the third prompt's voice is cached from here on
        items = [(p, slot) for slot, p in enumerate(prompts)]
        if packed:
            logits = runner.prefill_many(items, cache, pack_tokens)
            assert runner.prefilled_tokens < sum(lengths) - 64  # the cached voice's prefix was not run again
        else:
            logits = [runner.prefill(p, cache, slot) for p, slot in items]
        runs.append((logits, cache))
    (alone, alone_cache), (packed, packed_cache) = runs
    for slot, length in enumerate(lengths):
        assert torch.allclose(packed[slot], alone[slot], atol=1e-5, rtol=1e-5), (packed[slot] - alone[slot]).abs().max()
        for want, got in zip(alone_cache.layers, packed_cache.layers, strict=True):
            assert torch.allclose(got[slot, :length], want[slot, :length], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_a_packed_admission_costs_one_host_copy_each_way_and_the_settings(loaded):
    from higgs_tts.core.sampling import SamplingParams
    from higgs_tts.engine.batch import Batch
    from higgs_tts.engine.prefix_cache import PrefixCache
    from higgs_tts.engine.sequence import EngineRequest, Sequence
    from higgs_tts.tools.anatomy import Anatomy

    warm, prompts = packed_prompts(loaded)
    prompts = [*prompts, warm]
    params = SamplingParams(max_new_tokens=16)
    syncs = {}
    for count in (1, 4):
        batch = Batch(loaded.model, 4, 1024, prefix_cache=PrefixCache(2**30), pack_tokens=4096)
        with Anatomy() as counted:
            batch.admit_many([(Sequence(EngineRequest(p, params, slot)), slot) for slot, p in
                              enumerate(prompts[:count])])
        syncs[count] = counted.syncs
        assert sorted(batch.sequences) == list(range(count))
    print(syncs)
    # every prompt's ids and codes to the host in one copy, one plan back, each row's settings
    assert all(syncs[count] <= count + 2 for count in syncs), (syncs, counted.sync_kinds)
