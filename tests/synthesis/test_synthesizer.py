"""End to end on the tiny checkpoint: real loading, prompting, generate() and codec decode."""

import numpy as np
import pytest
import torch

from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.core.sampling import SamplingParams
from higgs_tts.core.voices import VoiceError
from higgs_tts.synthesis.generator import FastGenerator, TransformersGenerator
from higgs_tts.synthesis.synthesizer import SynthesisRequest, Synthesizer

HOP = 960


@pytest.fixture(scope="module")
def synthesizer(settings):
    return Synthesizer(settings, ModelCache())


def speak(synthesizer, text, **kwargs):
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("sampling", SamplingParams(max_new_tokens=40))
    return synthesizer.synthesize(SynthesisRequest(text=text, **kwargs))


def check_audio(result):
    assert result.sample_rate == 24000
    assert result.num_frames > 0
    assert len(result.audio) == result.num_frames * HOP
    assert result.audio.dtype == np.float32 and np.isfinite(result.audio).all()
    assert result.duration_seconds == pytest.approx(result.num_frames * 0.04)


def test_cloned_voice(synthesizer):
    result = speak(synthesizer, "Hello there, how are you", voices="belinda")
    check_audio(result)
    assert result.voices == ["belinda"]
    assert result.text == "Hello there, how are you."
    assert result.chunks == [result.text]
    assert result.generation_seconds > 0 and result.decode_seconds > 0


def test_two_voices_with_speaker_tags(synthesizer):
    result = speak(synthesizer, "[SPEAKER0] Hi there.\n[SPEAKER1] Hello!", voices="belinda,chadwick",
                   chunk_method="speaker")
    check_audio(result)
    assert result.voices == ["belinda", "chadwick"]
    assert result.chunks == ["[SPEAKER0] Hi there.", "[SPEAKER1] Hello!"]


def test_described_voice(synthesizer):
    result = speak(synthesizer, "A described voice speaks.", voices="daffy")
    check_audio(result)
    assert result.voices == ["daffy"]


def test_three_chunk_text_is_decoded_once(synthesizer):
    text = "First sentence here. Second sentence here. Third sentence here."
    result = speak(synthesizer, text, voices="en_woman", chunk_method="sentence", chunk_max_word_num=3,
                   generation_chunk_buffer_size=1)
    check_audio(result)
    assert result.chunks == ["First sentence here.", "Second sentence here.", "Third sentence here."]
    # Every chunk generated at most max_new_tokens columns (BOS + 7 delay columns carry no frame).
    assert result.num_frames <= 3 * (40 - 8)
    # One decode of all codes: the non-causal codec gives different samples at chunk seams than
    # decoding chunk by chunk would.
    assert np.array_equal(result.audio, synthesizer.decode(result.codes))


def test_same_seed_same_audio_and_different_seeds_differ(synthesizer):
    first = speak(synthesizer, "Repeat after me.", voices="belinda", seed=11)
    second = speak(synthesizer, "Repeat after me.", voices="belinda", seed=11)
    other = speak(synthesizer, "Repeat after me.", voices="belinda", seed=12)
    assert np.array_equal(first.audio, second.audio)
    assert first.seed == 11
    assert not (len(first.audio) == len(other.audio) and np.array_equal(first.audio, other.audio))


def test_greedy_is_deterministic(synthesizer):
    greedy = SamplingParams(temperature=0.0, max_new_tokens=30, ras_win_len=0)
    a = speak(synthesizer, "Greedy words.", sampling=greedy, seed=1)
    b = speak(synthesizer, "Greedy words.", sampling=greedy, seed=2)
    assert np.array_equal(a.audio, b.audio)


def test_seed_leaves_global_rng_alone(synthesizer):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    speak(synthesizer, "Do not touch my generator.", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_missing_seed_is_chosen_and_reported(synthesizer):
    result = speak(synthesizer, "Any seed.", seed=None)
    assert isinstance(result.seed, int) and 0 <= result.seed < 2**31
    # The reported seed is the one used: asked for again, it gives the same audio.
    again = speak(synthesizer, "Any seed.", seed=result.seed)
    assert np.array_equal(again.audio, result.audio)


def test_model_load_time_only_on_first_request(settings):
    synthesizer = Synthesizer(settings, ModelCache())
    first = speak(synthesizer, "One.")
    second = speak(synthesizer, "Two.")
    assert first.model_load_seconds > 0 and second.model_load_seconds == 0


def test_reference_codes_are_encoded_once(synthesizer):
    audio = synthesizer.voices.get("chadwick").load_audio()
    codes = synthesizer.encode_reference(audio)
    assert codes.shape[1] == 8 and codes.shape[0] == pytest.approx(len(audio) / HOP, abs=1)
    assert synthesizer.encode_reference(audio) is codes


def test_unknown_voice_fails_before_generating(synthesizer):
    with pytest.raises(VoiceError, match="unknown voice"):
        speak(synthesizer, "Hi.", voices="nobody")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "  "}, "text must be a non-empty string"),
        ({"text": "x", "chunk_method": "para"}, "chunk_method"),
        ({"text": "x", "chunk_max_word_num": 0}, "chunk_max_word_num"),
        ({"text": "x", "seed": -1}, "seed"),
        ({"text": "x", "generation_chunk_buffer_size": -2}, "generation_chunk_buffer_size"),
    ],
)
def test_bad_requests_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthesisRequest(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"temperature": 2.5}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": -1}, "top_k"),
     ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 9000}, "max_new_tokens"),
     ({"ras_win_len": -1}, "ras_win_len")],
)
def test_bad_sampling_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_prepare_loads_the_model_and_starts_the_fast_engine(settings):
    import dataclasses as dc

    from higgs_tts.core.checkpoint import ModelCache as Cache

    fast = Synthesizer(dc.replace(settings, engine="fast"), Cache())
    assert fast.loaded_model() is None
    fast.prepare()
    assert fast.loaded_model() is not None and isinstance(fast._generator, FastGenerator)
    assert fast.engine_load() == (0, 0, 0)
    fast.unload()
    assert fast._generator is None
    reference = Synthesizer(dc.replace(settings, engine="reference"), Cache())
    reference.prepare()
    assert reference.loaded_model() is not None and isinstance(reference._generator, TransformersGenerator)


def test_speaker_tags_are_counted_before_normalization(synthesizer):
    """As upstream: full-width brackets become [SPEAKERn] in the text, but only tags written as such
    choose the multi-speaker system text."""
    written = synthesizer.render_prompt(SynthesisRequest(text="[SPEAKER0] Hi.\n[SPEAKER1] Hello.", scene=""))
    full_width = synthesizer.render_prompt(SynthesisRequest(text="【SPEAKER0】 Hi.\n【SPEAKER1】 Hello.", scene=""))
    assert "SPEAKER1: masculine" in written
    assert "SPEAKER1: masculine" not in full_width and "[SPEAKER1] Hello." in full_width


def test_context_is_bounded_by_max_context_frames(settings):
    # With no room for earlier chunks, a text generates as with generation_chunk_buffer_size 0.
    import dataclasses

    text = "First sentence here. Second sentence here."
    bounded = Synthesizer(dataclasses.replace(settings, max_context_frames=1), ModelCache())
    unbounded = Synthesizer(settings, ModelCache())
    chunked = {"voices": "belinda", "chunk_method": "sentence", "chunk_max_word_num": 3, "seed": 2}
    got = speak(bounded, text, **chunked)
    want = speak(unbounded, text, **chunked, generation_chunk_buffer_size=0)
    kept = speak(unbounded, text, **chunked)
    assert got.num_frames > 0 and torch.equal(got.codes, want.codes)
    assert not torch.equal(kept.codes, want.codes)  # the context did matter


def test_stop_all_cancels_every_generation_from_then_on(settings):
    from higgs_tts.synthesis.synthesizer import Cancelled

    stopping = Synthesizer(settings, ModelCache())
    check_audio(speak(stopping, "Before the stop."))
    stopping.stop_all()
    with pytest.raises(Cancelled):
        speak(stopping, "After the stop.")
    with pytest.raises(Cancelled):
        list(stopping.stream(SynthesisRequest(text="Streamed after.", seed=1,
                                              sampling=SamplingParams(max_new_tokens=40))))
    assert stopping.engine_load() == (0, 0, 0)
