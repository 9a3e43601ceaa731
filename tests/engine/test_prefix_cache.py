"""Voices' prompt prefixes prefilled once: the same codes as without, bounded by bytes, and an
edited voice never served from a stale entry."""

import dataclasses

import pytest
import torch
from conftest import assert_codes_agree

from higgs_tts.core.checkpoint import load_model
from higgs_tts.core.prompt import PromptRenderer, PromptVoice, build_prompt
from higgs_tts.core.sampling import SamplingParams
from higgs_tts.engine.engine import Engine, EngineRequest
from higgs_tts.engine.prefix_cache import BLOCK, PrefixCache, prompt_blocks

pytestmark = pytest.mark.slow  # subprocesses, or over 10 s: not in scripts/test.sh --fast

GREEDY = SamplingParams(temperature=0.0, ras_win_len=0, max_new_tokens=48)
SAMPLED = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=48)


@pytest.fixture(scope="module")
def loaded(settings):
    return load_model(settings)


@pytest.fixture(scope="module")
def renderer(loaded):
    return PromptRenderer(loaded.processor)


def voice(seed: int = 0, frames: int = 250) -> PromptVoice:
    codes = torch.randint(0, 1024, (frames, 8), generator=torch.Generator().manual_seed(seed))
    return PromptVoice(description="d", transcript="Twas the night before my birthday.", frames=codes, is_clone=True)


def inputs(renderer, text: str, v: PromptVoice):
    return renderer.inputs(build_prompt(text, transcript=text, voices=[v], scene=""))


def runner_of(engine: Engine):
    return next(iter(engine._schedulers.values())).batch.runner


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_codes_with_the_prefix_cache_equal_codes_without(loaded, renderer, params):
    plain, cached = Engine(loaded.model), Engine(loaded.model, prefix_cache_bytes=2**30)
    texts = ["Hello there.", "A second sentence, with other words in it.", "Hello there."]
    for index, text in enumerate(texts):
        request = EngineRequest(inputs(renderer, text, voice()), params, seed=7)
        want = plain.generate([request])[0]
        got = cached.generate([request])[0]
        assert_codes_agree(got, want, loaded.device)
        prompt_len = int(request.inputs["input_ids"].shape[1])
        if index:  # the voice's prefix came from the cache: its own text and at most one block more
            text_tokens = len(loaded.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
            assert runner_of(cached).prefilled_tokens <= BLOCK + text_tokens + 8  # + the turn's own tags
            assert runner_of(cached).prefilled_tokens < prompt_len - 4 * BLOCK


def test_a_batch_with_cached_prefixes_equals_each_alone(loaded, renderer):
    cached = Engine(loaded.model, prefix_cache_bytes=2**30)
    requests = [EngineRequest(inputs(renderer, t, voice(seed)), p, 3) for t, seed, p in
                [("First one.", 0, GREEDY), ("Second one, longer.", 1, SAMPLED), ("Third.", 0, SAMPLED)]]
    cached.generate(requests)  # fills the cache
    batch = cached.generate(requests)  # every prefix cached
    for got, request in zip(batch, requests, strict=True):
        assert_codes_agree(got, Engine(loaded.model).generate([request])[0], loaded.device)


def test_an_edited_voice_is_a_new_key(loaded, renderer):
    cache_bytes = 2**30
    cached = Engine(loaded.model, prefix_cache_bytes=cache_bytes)
    original = inputs(renderer, "Hello there.", voice(0))
    cached.generate([EngineRequest(original, GREEDY, 0)])
    edited_voice = voice(0)
    edited_voice.frames[3, 0] = (edited_voice.frames[3, 0] + 1) % 1024  # one code in the voice's first frames
    edited = inputs(renderer, "Hello there.", edited_voice)
    assert edited["input_ids"].shape == original["input_ids"].shape  # the same tokens: only audio differs
    runner = runner_of(cached)
    hits = runner.prefix_cache.hits
    got = cached.generate([EngineRequest(edited, GREEDY, 0)])[0]
    audio_ids = runner.audio_ids

    def blocks_of(prompt_inputs):
        ids = prompt_inputs["input_ids"][0]
        return prompt_blocks(ids, prompt_inputs["audio_input_ids"][0], torch.isin(ids, torch.tensor(audio_ids)))

    first_audio = int(torch.isin(edited["input_ids"][0], torch.tensor(audio_ids)).nonzero()[0])
    # only blocks wholly before the edited clip may be shared
    assert runner.prefix_cache.hits - hits <= first_audio // BLOCK
    assert runner.prefilled_tokens >= edited["input_ids"].shape[1] - first_audio // BLOCK * BLOCK
    assert_codes_agree(got, Engine(loaded.model).generate([EngineRequest(edited, GREEDY, 0)])[0], loaded.device)
    # An edited transcript: the block holding the first changed token and every block after it differ.
    retold = inputs(renderer, "Hello there.", dataclasses.replace(edited_voice, transcript="Another one, told anew."))
    a, b = retold["input_ids"][0], edited["input_ids"][0]
    first = int((a[:len(b)] != b[:len(a)]).nonzero()[0])
    old, new = blocks_of(edited), blocks_of(retold)
    assert old[:first // BLOCK] == new[:first // BLOCK]
    assert all(x != y for x, y in zip(old[first // BLOCK:], new[first // BLOCK:], strict=False))


def test_eviction_keeps_the_bytes_bound_and_drops_chain_tails_first():
    layers = [torch.randn(3 * BLOCK, 2, 2, 8) for _ in range(2)]  # [S, 2, Hkv, D] per layer
    block_bytes = sum(t[:BLOCK].numel() * 4 for t in layers)
    cache = PrefixCache(max_bytes=4 * block_bytes)
    chain_a = [b"a1", b"a2", b"a3"]
    chain_b = [b"b1", b"b2", b"b3"]
    cache.store(chain_a, layers)
    assert len(cache) == 3 and cache.bytes == 3 * block_bytes
    cache.store(chain_b, layers)  # 6 blocks for a bound of 4: chain a's tail goes first
    assert cache.bytes <= cache.max_bytes and len(cache) == 4
    hit, got = cache.lookup(chain_a, limit=3)
    assert hit == BLOCK  # a's head is still there: a shorter prefix still serves
    assert torch.equal(got[0], layers[0][:BLOCK])
    hit, got = cache.lookup(chain_b, limit=3)
    assert hit == 3 * BLOCK and torch.equal(got[1], layers[1])
    assert cache.lookup(chain_b, limit=1)[0] == BLOCK  # the limit leaves tokens to run
    assert cache.lookup([b"unknown", *chain_b], limit=4)[0] == 0  # a chain is matched from its start
