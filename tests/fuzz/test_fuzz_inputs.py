"""Property-based fuzzing of the job input: generated inputs for the worker's validation
(service/schema.py) and the speech service (SpeechService.handle) on the tiny checkpoint.

The property: every input is either accepted or refused by name; validation raises nothing but
InputError, and `handle` always answers the documented body, never `internal_error`. Generation
is kept cheap by a small work budget (MAX_TOTAL_FRAMES), which the fuzzer also runs into."""

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from higgs_tts.core.text import CHUNK_METHODS
from higgs_tts.service.errors import STATUS, InputError
from higgs_tts.service.formats import FORMATS
from higgs_tts.service.schema import ACTIONS, GenerateInput, parse_input
from higgs_tts.service.speech import SpeechService

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

FIELDS = sorted(set(GenerateInput.model_fields) | {"action", "voice_name", "overwrite", "description"})
HOSTILE_TEXT = ["\ud800", "<|eot_id|>", "<|AUDIO_OUT|>", "\x00", "\u200b\u200b", "[SPEAKER0]", "a " * 50,
                "Hello there.", "  ", "é中文", "[laugh]", "\n\n", "<|audio_out_bos|> hi"]
NUMBERS = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 5e-324, 1e-45, 1e-300, 8192, 8193, 2**31, 2**63]))
TEXTS = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
VALUES = st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS, st.sampled_from(list(ACTIONS)),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=10))
INPUTS = st.one_of(
    st.dictionaries(KEYS, VALUES, max_size=6),
    # mostly well-formed generation requests with one or two odd fields
    st.fixed_dictionaries({"transcript": TEXTS, "max_new_tokens": st.integers(1, 40), "seed": st.just(1)},
                          optional={k: VALUES for k in FIELDS if k not in ("transcript", "max_new_tokens", "seed")}),
    st.one_of(st.none(), st.lists(st.integers(), max_size=2), TEXTS, NUMBERS),  # not an object at all
    # valid generation requests over the fields' ranges (they generate: the budget keeps them short)
    st.fixed_dictionaries(
        {"transcript": st.sampled_from(["Hello there.", "One. Two.", "[SPEAKER0] Hi.\n[SPEAKER1] Yo.", "é中文。"]),
         "max_new_tokens": st.integers(1, 40)},
        optional={"temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(0, 100),
                  "seed": st.integers(0, 2**32 - 1), "output_format": st.sampled_from(sorted(FORMATS)),
                  "chunk_method": st.sampled_from([None, *CHUNK_METHODS]), "chunk_max_word_num": st.integers(1, 5),
                  "ref_audio": st.sampled_from(["belinda", "daffy", "belinda,chadwick", "nobody"]),
                  "speed": st.floats(0.25, 4), "scene_prompt": TEXTS,
                  "generation_chunk_buffer_size": st.integers(0, 3)}),
)
CASES = {"validation": 0, "service": 0, "generated": 0}


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(INPUTS)
def test_validation_accepts_or_names_the_field(raw):
    CASES["validation"] += 1
    try:
        request = parse_input(raw)
    except InputError as exc:
        assert str(exc) and exc.code in STATUS
        assert exc.field is None or isinstance(exc.field, str)
        return
    assert request.action in ACTIONS


@pytest.fixture(scope="module")
def budgeted(settings, tmp_path_factory):
    """The speech service on the tiny checkpoint with a work budget of 120 frames a request."""
    import shutil

    from higgs_tts.core.checkpoint import ModelCache
    from higgs_tts.settings import ServiceSettings
    from higgs_tts.synthesis.synthesizer import Synthesizer

    voices = tmp_path_factory.mktemp("fuzz") / "voices"
    shutil.copytree(settings.voice_prompts_path, voices)
    local = dataclasses.replace(settings, voice_prompts_path=voices)
    limits = ServiceSettings(max_total_frames=120, max_transcript_chars=500)
    return SpeechService(local, limits, Synthesizer(local, ModelCache()))


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=INPUTS)
def test_the_service_answers_every_input_in_the_documented_shape(budgeted, raw):
    CASES["service"] += 1
    response = budgeted.handle(raw, "fuzz")
    assert isinstance(response, dict) and isinstance(response.get("success"), bool)
    CASES["generated"] += "audio_base64" in response
    if response["success"] is False:
        assert response["error_code"] in STATUS and response["error_code"] != "internal_error", response
        assert isinstance(response["error"], str) and "Traceback" not in response["error"]


def test_report_case_counts(pytestconfig):
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    line = (f"input fuzzing: {CASES['validation']} validation cases, {CASES['service']} service cases "
            f"({CASES['generated']} generated audio)")
    if reporter is not None:
        reporter.write_line(line)
    print(line)
    assert CASES["validation"] > 0 and CASES["service"] > 0 and CASES["generated"] > 0
