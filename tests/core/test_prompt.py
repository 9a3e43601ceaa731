"""Rendered prompts for every reference case, against strings written from the facts sheet."""

import pytest
import torch

from higgs_tts.core.checkpoint import load_processor
from higgs_tts.core.prompt import PromptRenderer, PromptVoice, build_prompt

BOT = "<|begin_of_text|>"
AUDIO = "<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>"
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
    expected = (
        system("Generate audio following instruction.")
        + user("[SPEAKER0] First reference.") + assistant_audio()
        + user("[SPEAKER1] Second reference.") + assistant_audio()
        + user(text) + GEN
    )
    voices = [clone("First reference."), clone("Second reference.")]
    assert render(renderer, text, voices=voices, scene="") == expected


def test_voices_in_system_block(renderer):
    expected = (
        system("Generate audio following instruction.\n\n<|scene_desc_start|>\n"
               f"Audio is recorded from a quiet room.\n\nSPEAKER0: {AUDIO}\nSPEAKER1: {AUDIO}\n<|scene_desc_end|>")
        + user("Hello.") + GEN
    )
    voices = [clone("a"), clone("b")]
    assert render(renderer, "Hello.", voices=voices, voices_in_system=True) == expected


def test_voice_in_system_block_without_scene(renderer):
    expected = (
        system(f"Generate audio following instruction.\n\n<|scene_desc_start|>\nSPEAKER0: {AUDIO}\n<|scene_desc_end|>")
        + user("Hello.") + GEN
    )
    assert render(renderer, "Hello.", voices=[clone("a")], scene="", voices_in_system=True) == expected


def test_clip_without_transcript_goes_into_the_system_block(renderer):
    untranscribed = PromptVoice(description="uploaded", frames=None, is_clone=True)
    expected = (
        system(f"Generate audio following instruction.\n\n<|scene_desc_start|>\nSPEAKER0: {AUDIO}\n<|scene_desc_end|>")
        + user("Hello.") + GEN
    )
    assert render(renderer, "Hello.", voices=[untranscribed], scene="") == expected


def test_described_voice_forces_the_system_block(renderer):
    described = PromptVoice(description="Animated character voice")
    expected = (
        system("Generate audio following instruction.\n\n<|scene_desc_start|>\n"
               f"Audio is recorded from a quiet room.\n\nSPEAKER0: {AUDIO}\n"
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
        system("Generate audio following instruction.")
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
