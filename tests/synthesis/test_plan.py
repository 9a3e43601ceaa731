"""A request is planned once (synthesis/plan.py): text, chunks, voices and scene, immutable, made before
any work and read by everything after it (a job's plan through the service: tests/service/test_planned_once.py).
Nothing here imports the service layer, so these run where only the engine's dependencies are installed."""

import dataclasses

import numpy as np
import pytest

from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.core.prompt import DEFAULT_SCENE
from higgs_tts.core.sampling import SamplingParams
from higgs_tts.core.voices import VoiceError, VoiceLibrary
from higgs_tts.synthesis.plan import NothingToSpeak, Plan, has_speech, make_plan, spoken_text
from higgs_tts.synthesis.synthesizer import ReferenceClip, SynthesisRequest, Synthesizer


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


def test_the_synthesizer_uses_a_plan_it_is_given(settings, counted):
    plans, _ = counted
    synthesizer = Synthesizer(settings, ModelCache())
    request = SynthesisRequest(text="Given plan.", seed=1, sampling=SamplingParams(max_new_tokens=40))
    given = synthesizer.plan(request)
    result = synthesizer.synthesize(request, plan=given)
    assert plans.calls == 1 and result.chunks == list(given.chunks) and isinstance(given, Plan)
