"""A request is planned once (synthesis/plan.py): text, chunks, voices and scene, immutable, made before
any work and read by everything after it."""

import dataclasses

import numpy as np
import pytest

from higgs_tts.core.prompt import DEFAULT_SCENE
from higgs_tts.core.voices import VoiceError, VoiceLibrary
from higgs_tts.service.events import Audio, ChunkEnd, Done
from higgs_tts.service.schema import parse_input
from higgs_tts.synthesis import plan as plan_module
from higgs_tts.synthesis.plan import NothingToSpeak, Plan, has_speech, make_plan, spoken_text
from higgs_tts.synthesis.synthesizer import ReferenceClip, SynthesisRequest

BASE = {"max_new_tokens": 40, "seed": 3}


def test_a_plan_holds_the_chunks_voices_and_scene(voice_prompts):
    request = SynthesisRequest(text="One two three. Four five six.", voices="belinda,daffy", chunk_method="sentence",
                               chunk_max_word_num=3, reference=ReferenceClip(audio=np.zeros(24000, np.float32)))
    plan = make_plan(request, VoiceLibrary(voice_prompts))
    assert plan.chunks == ("One two three.", "Four five six.")
    assert [v.name for v in plan.voices] == ["belinda", "daffy"]
    assert plan.voice_names == ("belinda", "daffy", "uploaded") and plan.scene == DEFAULT_SCENE
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.chunks = ()  # type: ignore[misc]


def test_nothing_to_speak_and_unknown_voices_fail_in_the_plan(voice_prompts):
    library = VoiceLibrary(voice_prompts)
    with pytest.raises(NothingToSpeak):
        make_plan(SynthesisRequest(text="... !!"), library)
    with pytest.raises(VoiceError):
        make_plan(SynthesisRequest(text="Hi.", voices="nobody"), library)
    assert not has_speech("... !!") and has_speech("Hi.") and spoken_text("hi") == "hi."


class Counting:
    """The real function, counting its calls."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch):
    """make_plan and chunk_text, as synthesis calls them, counted."""
    from higgs_tts.synthesis import synthesizer

    plans, chunkings = Counting(make_plan), Counting(plan_module.chunk_text)
    monkeypatch.setattr(synthesizer, "make_plan", plans)
    monkeypatch.setattr(plan_module, "chunk_text", chunkings)
    return plans, chunkings


def test_a_job_is_planned_and_chunked_once(service, counted):
    plans, chunkings = counted
    response = service.handle({"transcript": "First part here. Second part here.", "chunk_method": "sentence",
                               "chunk_max_word_num": 3, "ref_audio": "belinda", **BASE})
    assert response["success"], response
    assert response["generation_metrics"]["chunks_processed"] == 2
    assert (plans.calls, chunkings.calls) == (1, 1)


def test_a_streamed_job_is_planned_and_chunked_once(service, counted):
    plans, chunkings = counted
    items = list(service.open_stream(parse_input({"transcript": "Streamed once. And twice.",
                                                  "chunk_method": "sentence", "chunk_max_word_num": 2, **BASE})))
    *events, done = items  # typed: Audio pieces and a ChunkEnd per chunk, then Done with the result
    assert all(isinstance(e, Audio | ChunkEnd) for e in events) and isinstance(done, Done)
    pieces = [e for e in events if isinstance(e, Audio)]
    assert [e.done for e in events if isinstance(e, ChunkEnd)] == [1, 2]
    assert len(done.result.chunks) == 2
    assert np.array_equal(np.concatenate([p.samples for p in pieces]), done.result.audio)
    assert (plans.calls, chunkings.calls) == (1, 1)


def test_the_synthesizer_uses_a_plan_it_is_given(service, counted):
    plans, _ = counted
    request = SynthesisRequest(text="Given plan.", seed=1)
    given = service.synthesizer.plan(request)
    result = service.synthesizer.synthesize(request, plan=given)
    assert plans.calls == 1 and result.chunks == list(given.chunks) and isinstance(given, Plan)
