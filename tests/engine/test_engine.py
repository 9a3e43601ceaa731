"""The fast engine against transformers' generate() on the tiny checkpoint (CPU, no graphs; on CUDA
with graphs, where codes from other batch shapes agree by a share, not bitwise: conftest)."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import assert_codes_agree

from higgs_tts.core.checkpoint import ModelCache, load_model
from higgs_tts.core.generate import transformers_generate
from higgs_tts.core.prompt import PromptRenderer, PromptVoice, build_prompt
from higgs_tts.core.sampling import SamplingParams
from higgs_tts.engine.engine import Engine, EngineRequest
from higgs_tts.synthesis.events import Audio, ChunkEnd, Done
from higgs_tts.synthesis.synthesizer import SynthesisRequest, Synthesizer

GREEDY = SamplingParams(temperature=0.0, ras_win_len=0, max_new_tokens=64)


@pytest.fixture(scope="module")
def loaded(settings):
    return load_model(settings)


@pytest.fixture(scope="module")
def engine(loaded):
    return Engine(loaded.model)


@pytest.fixture(scope="module")
def renderer(loaded):
    return PromptRenderer(loaded.processor)


@pytest.fixture(scope="module")
def voice_frames(loaded, settings):
    synthesizer = Synthesizer(settings, ModelCache())
    library = synthesizer.voices
    return {name: synthesizer.encode_reference(library.get(name).load_audio()) for name in ("belinda", "chadwick")}


def clone(frames, transcript):
    return PromptVoice(description="d", transcript=transcript, frames=frames, is_clone=True)


def prompts(voice_frames):
    belinda = clone(voice_frames["belinda"], "Twas the night before my birthday.")
    chadwick = clone(voice_frames["chadwick"], "Oh dear, who left all this junk lying around?")
    return {
        "no_voice": build_prompt("Hello there.", transcript="Hello there.", voices=[], scene="A quiet room."),
        "cloned": build_prompt("Cloned speech.", transcript="Cloned speech.", voices=[belinda], scene=""),
        "two_voices": build_prompt("[SPEAKER0] Hi.\n[SPEAKER1] Hey.", transcript="[SPEAKER0] Hi.\n[SPEAKER1] Hey.",
                                   voices=[belinda, chadwick], scene=""),
        "in_system": build_prompt("System voice.", transcript="System voice.", voices=[belinda], scene="Hall.",
                                  voices_in_system=True),
    }


@pytest.mark.parametrize("case", ["no_voice", "cloned", "two_voices", "in_system"])
def test_greedy_codes_equal_the_reference(engine, loaded, renderer, voice_frames, case):
    inputs = renderer.inputs(prompts(voice_frames)[case])
    reference = transformers_generate(loaded.model, inputs, GREEDY, seed=0)
    fast = engine.generate([EngineRequest(inputs, GREEDY, seed=0)])[0]
    assert reference.shape[0] > 9
    assert_codes_agree(fast, reference, loaded.device)


def test_batch_of_different_prompts_equals_each_alone(engine, loaded, renderer, voice_frames):
    cases = prompts(voice_frames)
    inputs = [renderer.inputs(cases[c]) for c in ("no_voice", "cloned", "two_voices")]
    lengths = {i["input_ids"].shape[1] for i in inputs}
    assert len(lengths) == 3  # really different prompts
    params = [GREEDY, dataclasses.replace(GREEDY, max_new_tokens=20), GREEDY]
    batch = engine.generate([EngineRequest(i, p, 0) for i, p in zip(inputs, params, strict=True)])
    for got, i, p in zip(batch, inputs, params, strict=True):
        assert_codes_agree(got, transformers_generate(loaded.model, i, p, seed=0), loaded.device)
    assert batch[1].shape[0] <= 20


def test_padded_batch_of_three_runs_as_four_and_equals_each_alone(loaded, renderer, voice_frames):
    padded = Engine(loaded.model, pad_batches=True)  # as CUDA graphs run it: bucket of 4 rows
    cases = prompts(voice_frames)
    inputs = [renderer.inputs(cases[c]) for c in ("cloned", "no_voice", "in_system")]
    batch = padded.generate([EngineRequest(i, GREEDY, 0) for i in inputs])
    for got, i in zip(batch, inputs, strict=True):
        assert_codes_agree(got, transformers_generate(loaded.model, i, GREEDY, seed=0), loaded.device)
    assert [capacity for capacity, _ in padded._schedulers] == [4]


def test_batch_buckets():
    from higgs_tts.engine.batch import padded_batch

    assert [padded_batch(b) for b in (1, 2, 3, 5, 8, 9, 64, 65, 200)] == [1, 2, 4, 8, 8, 16, 64, 128, 200]


def test_old_cache_lengths_are_dropped(loaded, renderer, voice_frames):
    from higgs_tts.engine.batch import LENGTH_BUCKET
    from higgs_tts.engine.engine import MAX_SCHEDULERS

    engine = Engine(loaded.model)
    inputs = renderer.inputs(prompts(voice_frames)["no_voice"])
    for extra in range(MAX_SCHEDULERS + 1):  # each needs a longer cache
        params = dataclasses.replace(GREEDY, max_new_tokens=2 + extra * LENGTH_BUCKET)
        engine.generate([EngineRequest(inputs, params, 0)])
    assert len(engine._schedulers) == MAX_SCHEDULERS
    assert min(length for _, length in engine._schedulers) > LENGTH_BUCKET  # the shortest (first used) went first


def test_three_chunk_text_equals_the_reference_path(settings):
    request = SynthesisRequest(
        text="First chunk here. Second chunk here. Third chunk here.", voices="belinda", chunk_method="sentence",
        chunk_max_word_num=3, sampling=GREEDY, seed=0,
    )
    models = ModelCache()
    fast = Synthesizer(dataclasses.replace(settings, engine="fast"), models).synthesize(request)
    reference = Synthesizer(dataclasses.replace(settings, engine="reference"), models).synthesize(request)
    assert len(fast.chunks) == 3
    if torch.device(settings.device).type == "cuda":  # codes agree by a share there; audio would follow them
        assert fast.num_frames > 0 and reference.num_frames > 0
        assert_codes_agree(fast.codes, reference.codes, settings.device)
    else:
        assert fast.num_frames == reference.num_frames > 0
        assert np.array_equal(fast.audio, reference.audio)


SAMPLED = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=48)


def test_same_seed_same_output(engine, renderer, voice_frames):
    inputs = renderer.inputs(prompts(voice_frames)["cloned"])
    a = engine.generate([EngineRequest(inputs, SAMPLED, 123)])[0]
    b = engine.generate([EngineRequest(inputs, SAMPLED, 123)])[0]
    c = engine.generate([EngineRequest(inputs, SAMPLED, 124)])[0]
    assert torch.equal(a, b)
    assert not (a.shape == c.shape and torch.equal(a, c))


def test_output_does_not_depend_on_batch_composition(engine, renderer, voice_frames):
    cases = prompts(voice_frames)
    mine = EngineRequest(renderer.inputs(cases["cloned"]), SAMPLED, 77)
    alone = engine.generate([mine])[0]
    others = [EngineRequest(renderer.inputs(cases["no_voice"]), SAMPLED, 1),
              EngineRequest(renderer.inputs(cases["two_voices"]), dataclasses.replace(SAMPLED, temperature=0.5), 2)]
    in_batch = engine.generate([others[0], mine, others[1]])[1]
    assert_codes_agree(in_batch, alone, engine.device)


def test_sampling_respects_the_delay_pattern(engine, renderer, voice_frames):
    columns = engine.generate([EngineRequest(renderer.inputs(prompts(voice_frames)["no_voice"]), SAMPLED, 5)])[0]
    assert (columns[0] == 1024).all()
    for k in range(1, 8):
        assert (columns[1 : k + 1, k] == 1024).all()
        assert (columns[k + 1 :, k] != 1024).any() or columns.shape[0] <= k + 1
    if (columns[-1] == 1025).all():  # ended: EOS spreads one codebook per step
        first_eos = int((columns == 1025).any(dim=1).nonzero()[0])
        for j in range(1, columns.shape[0] - first_eos):
            assert (columns[first_eos + j, :j] == 1025).all()


def test_stream_pieces_add_up_to_generate(engine, renderer, voice_frames):
    request = EngineRequest(renderer.inputs(prompts(voice_frames)["cloned"]), GREEDY, 0)
    pieces = list(engine.stream(request))
    assert all(1 <= p.shape[0] <= engine.steps_per_sync for p in pieces)
    assert torch.equal(torch.cat(pieces), engine.generate([request])[0])


@pytest.mark.parametrize("engine_name", ["fast", "reference"])
def test_synthesizer_stream_matches_synthesize(settings, engine_name):
    local = dataclasses.replace(settings, engine=engine_name)
    synthesizer = Synthesizer(local, ModelCache())
    request = SynthesisRequest(text="Streaming now. And a second chunk.", voices="belinda", chunk_method="sentence",
                               chunk_max_word_num=2, sampling=dataclasses.replace(GREEDY, max_new_tokens=48), seed=0)
    import time

    started = time.perf_counter()
    events = []
    chunks, arrivals = [], []  # the audio pieces and when each came
    for event in synthesizer.stream(request, {"first_chunk": 2, "chunk": 4, "context": 3, "crossfade": 120}):
        events.append(event)
        if isinstance(event, Audio):
            chunks.append(event.samples)
            arrivals.append(time.perf_counter() - started)
    # typed events only: audio pieces, one ChunkEnd per text chunk in order, Done last
    assert all(isinstance(e, Audio | ChunkEnd | Done) for e in events) and isinstance(events[-1], Done)
    result = events[-1].result
    ends = [e for e in events if isinstance(e, ChunkEnd)]
    assert [(e.done, e.total) for e in ends] == [(i + 1, len(result.chunks)) for i in range(len(result.chunks))]
    assert ends[-1].audio_seconds == pytest.approx(result.duration_seconds, abs=1e-3)
    assert len(chunks) > 2 and all(isinstance(c, np.ndarray) and len(c) for c in chunks)
    # Audio flows before the work is done: the first piece comes before the last chunk is generated.
    kinds = [type(e) for e in events]
    assert kinds.index(Audio) < len(kinds) - 1 - kinds[::-1].index(ChunkEnd)
    assert result.first_audio_seconds == pytest.approx(arrivals[0], abs=0.05)
    whole = synthesizer.synthesize(request)
    assert result.num_frames == whole.num_frames and torch.equal(result.codes, whole.codes)
    assert np.abs(np.concatenate(chunks) - whole.audio).max() < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: CUDA graphs")
def test_captured_step_equals_the_eager_step(loaded, renderer, voice_frames):
    """The whole step (sampler, bookkeeping, layers) replayed from CUDA graphs, against the same
    step run eagerly, greedy and seeded, over a padded batch."""
    cases = prompts(voice_frames)
    requests = [EngineRequest(renderer.inputs(cases[c]), p, seed)
                for seed, (c, p) in enumerate([("cloned", GREEDY), ("no_voice", SAMPLED), ("two_voices", SAMPLED)])]
    graphed = Engine(loaded.model, use_cuda_graphs=True).generate(requests)
    eager = Engine(loaded.model, use_cuda_graphs=False, pad_batches=True).generate(requests)
    for got, want in zip(graphed, eager, strict=True):
        assert_codes_agree(got, want, loaded.device)


@pytest.mark.parametrize("graphs", [False, pytest.param(True, marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: CUDA graphs"))])
def test_a_dropped_batch_frees_its_cache_and_graphs_at_once(loaded, graphs):
    """Nothing it owns (its graphs, its runner) holds a strong reference back to it: no cycle, so its KV cache
    and graph pool go when the last reference does (an engine drops its least recently used batches), not at
    a later full pass of the garbage collector."""
    import gc
    import weakref

    from higgs_tts.engine.batch import Batch

    gc.disable()
    try:
        batch = Batch(loaded.model, 2, 256, use_cuda_graphs=graphs, pad_rows=graphs)
        assert (batch.capture_all() > 0) == graphs
        dropped = weakref.ref(batch)
        del batch
        assert dropped() is None
    finally:
        gc.enable()
