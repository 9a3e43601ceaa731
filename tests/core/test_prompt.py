"""Rendered prompts for every reference case: strings written from the facts sheet, and token ids
derived by running boson-ai/higgs-audio's own code (tests/core/data/upstream_prompts.json, made as
docs/upstream-fidelity.md describes)."""

import json
from pathlib import Path

import pytest
import torch

from higgs_tts.core.checkpoint import load_processor
from higgs_tts.core.prompt import PromptRenderer, PromptVoice, build_prompt

BOT = "<|begin_of_text|>"
AUDIO = "<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>"
AUDIO_IN = "<|audio_bos|><|AUDIO|><|audio_eos|>"
GEN = "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>"
QUIET = "Audio is recorded from a quiet room."


def system(text):
    return f"{BOT}<|start_header_id|>system<|end_header_id|>\n\n{text}<|eot_id|>"


def user(text):
    return f"<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>"


def assistant_audio():
    return f"<|start_header_id|>assistant<|end_header_id|>\n\n{AUDIO}<|eot_id|>"


@pytest.fixture(scope="module")
def renderer(settings):
    return PromptRenderer(load_processor(settings))


def clone(transcript, frames=None):
    return PromptVoice(description="d", transcript=transcript, frames=frames, is_clone=True)


def render(renderer, chunk, **kwargs):
    kwargs.setdefault("transcript", chunk)
    kwargs.setdefault("voices", [])
    kwargs.setdefault("scene", QUIET)
    return renderer.render(build_prompt(chunk, **kwargs))


def test_no_voice_with_scene(renderer):
    expected = (
        system("Generate audio following instruction.\n\n<|scene_desc_start|>\n"
               "Audio is recorded from a quiet room.\n<|scene_desc_end|>")
        + user("Hello there.") + GEN
    )
    assert render(renderer, "Hello there.") == expected


def test_no_voice_no_scene(renderer):
    expected = system("Generate audio following instruction.") + user("Hello there.") + GEN
    assert render(renderer, "Hello there.", scene="") == expected


def test_no_voice_several_speaker_tags(renderer):
    text = "[SPEAKER0] Hi.\n[SPEAKER1] Hello.\n[SPEAKER2] Hey."
    expected = (
        system(
            "You are an AI assistant designed to convert text into speech.\n"
            "If the user's message includes a [SPEAKER*] tag, do not read out the tag and generate speech "
            "for the following text, using the specified voice.\n"
            "If no speaker tag is present, select a suitable voice on your own.\n\n"
            "<|scene_desc_start|>\nAudio is recorded from a quiet room.\n\n"
            "SPEAKER0: feminine\nSPEAKER1: masculine\nSPEAKER2: feminine\n<|scene_desc_end|>"
        )
        + user(text) + GEN
    )
    assert render(renderer, text) == expected


def test_no_voice_several_speaker_tags_no_scene(renderer):
    text = "[SPEAKER0] Hi.\n[SPEAKER1] Hello."
    rendered = render(renderer, text, scene="")
    assert "<|scene_desc_start|>\nSPEAKER0: feminine\nSPEAKER1: masculine\n<|scene_desc_end|>" in rendered


def test_one_cloned_voice_is_an_in_context_example(renderer):
    expected = (
        system("Generate audio following instruction.\n\n<|scene_desc_start|>\n"
               "Audio is recorded from a quiet room.\n<|scene_desc_end|>")
        + user("Reference words.") + assistant_audio()
        + user("Hello there.") + GEN
    )
    assert render(renderer, "Hello there.", voices=[clone("Reference words.")]) == expected


def test_two_cloned_voices_get_speaker_prefixes(renderer):
    text = "[SPEAKER0] Hi.\n[SPEAKER1] Hello."
    expected = (  # a cloned voice without a scene: no system turn at all
        BOT
        + user("[SPEAKER0] First reference.") + assistant_audio()
        + user("[SPEAKER1] Second reference.") + assistant_audio()
        + user(text) + GEN
    )
    voices = [clone("First reference."), clone("Second reference.")]
    assert render(renderer, text, voices=voices, scene="") == expected


def test_voices_in_system_block(renderer):
    expected = (
        system("Generate audio following instruction.\n\n<|scene_desc_start|>\n"
               "Audio is recorded from a quiet room.\n\n"
               f"SPEAKER0: {AUDIO_IN}\nSPEAKER1: {AUDIO_IN}\n<|scene_desc_end|>")
        + user("Hello.") + GEN
    )
    voices = [clone("a"), clone("b")]
    assert render(renderer, "Hello.", voices=voices, voices_in_system=True) == expected


def test_voice_in_system_block_without_scene(renderer):
    expected = (
        system("Generate audio following instruction.\n\n<|scene_desc_start|>\n"
               f"SPEAKER0: {AUDIO_IN}\n<|scene_desc_end|>")
        + user("Hello.") + GEN
    )
    assert render(renderer, "Hello.", voices=[clone("a")], scene="", voices_in_system=True) == expected


def test_clip_without_transcript_goes_into_the_system_block(renderer):
    untranscribed = PromptVoice(description="uploaded", frames=None, is_clone=True)
    expected = (
        system("Generate audio following instruction.\n\n<|scene_desc_start|>\n"
               f"SPEAKER0: {AUDIO_IN}\n<|scene_desc_end|>")
        + user("Hello.") + GEN
    )
    assert render(renderer, "Hello.", voices=[untranscribed], scene="") == expected


def test_described_voice_forces_the_system_block(renderer):
    described = PromptVoice(description="Animated character voice")
    expected = (
        system("Generate audio following instruction.\n\n<|scene_desc_start|>\n"
               f"Audio is recorded from a quiet room.\n\nSPEAKER0: {AUDIO_IN}\n"
               "SPEAKER1: Animated character voice\n<|scene_desc_end|>")
        + user("Hi.") + GEN
    )
    assert render(renderer, "Hi.", voices=[clone("a"), described]) == expected


def test_earlier_chunks_follow_the_references(renderer):
    frames = torch.zeros((3, 8), dtype=torch.long)
    prompt = build_prompt(
        "Third.", transcript="First. Second. Third.", voices=[clone("Ref.", frames)], scene="",
        history=[("First.", frames), ("Second.", frames)],
    )
    expected = (
        BOT
        + user("Ref.") + assistant_audio() + user("First.") + assistant_audio()
        + user("Second.") + assistant_audio() + user("Third.") + GEN
    )
    assert renderer.render(prompt) == expected
    assert len(prompt.clips) == 3


def test_inputs_expand_each_clip_to_its_positions(renderer):
    a = torch.randint(0, 1024, (4, 8))
    b = torch.randint(0, 1024, (6, 8))
    prompt = build_prompt("Go.", transcript="Go.", voices=[clone("x", a), clone("y", b)], scene="")
    inputs = renderer.inputs(prompt)
    ids = inputs["input_ids"][0]
    audio = inputs["audio_input_ids"][0]
    assert audio.shape == (4 + 9 + 6 + 9, 8)
    placeholders = (ids == 128016) | (ids == 128014)
    assert int(placeholders.sum()) == audio.shape[0]
    assert int((ids == 128014).sum()) == 2 * 7  # delay filler: K - 1 per clip
    assert int(ids[0]) == 128000 and int((ids == 128000).sum()) == 1  # one BOS, from the template
    assert int(ids[-1]) == 128013
    assert inputs["audio_input_ids_mask"].all()


def test_inputs_need_codes(renderer):
    prompt = build_prompt("Go.", transcript="Go.", voices=[clone("x")], scene="")
    with pytest.raises(ValueError, match="no codes"):
        renderer.inputs(prompt)


# -- against upstream's own code ---------------------------------------------------------------

UPSTREAM = json.loads((Path(__file__).parent / "data" / "upstream_prompts.json").read_text(encoding="utf-8"))
AUDIO_OUT_BOS, AUDIO_IN_BOS, AUDIO_POSITIONS = 128013, 128011, (128016, 128014)


def _upstream_voices(case):
    voices = []
    for voice in case["voices"]:
        if "clone" in voice:
            frames = torch.randint(0, 1024, (voice["frames"], 8))
            voices.append(PromptVoice(description=voice["clone"], transcript=voice["transcript"], frames=frames,
                                      is_clone=True))
        else:
            voices.append(PromptVoice(description=voice["description"]))
    return voices


def _upstream_case_prompts(case):
    """Our prompt for each chunk of an upstream case, with earlier chunks as context as the synthesizer keeps them."""
    voices = _upstream_voices(case)
    transcript = "\n".join(case["chunks"])
    buffer = case["generation_chunk_buffer_size"]
    history = []
    for chunk in case["chunks"]:
        context = history if buffer is None else history[-buffer:] if buffer else []
        yield build_prompt(chunk, transcript=transcript, voices=voices, scene=case["scene"],
                           voices_in_system=case["ref_audio_in_system_message"], history=context)
        history.append((chunk, torch.randint(0, 1024, (case["generated_frames_per_chunk"], 8))))


def _audio_runs(ids):
    """(segment start token, frames) for each expanded clip, in order."""
    runs, i = [], 0
    while i < len(ids):
        if ids[i] in AUDIO_POSITIONS:
            j = i
            while j < len(ids) and ids[j] in AUDIO_POSITIONS:
                j += 1
            runs.append((ids[i - 1], j - i - 9))
            i = j
        else:
            i += 1
    return runs


def test_upstream_data_covers_the_cases():
    assert len(UPSTREAM["commit"]) == 40
    assert len(UPSTREAM["cases"]) >= 8


@pytest.mark.parametrize("name", sorted(UPSTREAM["cases"]))
def test_prompt_tokens_equal_upstreams(renderer, name):
    """Upstream's tokens plus `<|audio_out_bos|>`, which upstream's model writes as its first token."""
    case = UPSTREAM["cases"][name]
    prompts = list(_upstream_case_prompts(case))
    assert len(prompts) == len(case["upstream_prompts"])
    tokenizer = renderer.processor.tokenizer
    for prompt, expected in zip(prompts, case["upstream_prompts"], strict=True):
        ids = tokenizer(renderer.render(prompt), add_special_tokens=False)["input_ids"]
        assert ids == expected["input_ids"] + [AUDIO_OUT_BOS], name


@pytest.mark.parametrize("name", sorted(UPSTREAM["cases"]))
def test_clips_are_embedded_where_upstream_embeds_them(renderer, name):
    """Audio-in clips (system block) and audio-out clips (example and context turns), in upstream's order and
    lengths; each clip's codes fill its positions (delay pattern: T frames take T + 9)."""
    case = UPSTREAM["cases"][name]
    for prompt, expected in zip(_upstream_case_prompts(case), case["upstream_prompts"], strict=True):
        inputs = renderer.inputs(prompt)
        runs = _audio_runs(inputs["input_ids"][0].tolist())
        assert [n for bos, n in runs if bos == AUDIO_IN_BOS] == expected["audio_in_frames"]
        assert [n for bos, n in runs if bos == AUDIO_OUT_BOS] == expected["audio_out_frames"]
        assert len(runs) == len(prompt.clips)
        total = sum(n + 9 for _, n in runs)
        assert (0 if "audio_input_ids" not in inputs else inputs["audio_input_ids"].shape[1]) == total
