"""Conversations for every reference case, rendered as the reference pipeline renders them.

The token sequences equal boson-ai/higgs-audio's (`examples/generation.py` and `prepare_chatml_sample`),
checked against sequences derived by running that code (docs/upstream-fidelity.md). They are rendered
with our own template (`prompt_template.jinja` beside this file), because the checkpoint's chat
template cannot express two of upstream's cases: a conversation without a system turn (a cloned voice
and no scene) and reference clips in the system block as audio-*input* segments
(`<|audio_bos|><|AUDIO|><|audio_eos|>`). The one deliberate difference: the generation prompt ends with
`<|audio_out_bos|>`, the token upstream's model writes first itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .codes import STREAM_BOS, STREAM_EOS, delay_frames
from .text import speaker_tags

DEFAULT_SYSTEM = "Generate audio following instruction."
MULTISPEAKER_SYSTEM = (
    "You are an AI assistant designed to convert text into speech.\n"
    "If the user's message includes a [SPEAKER*] tag, do not read out the tag and generate speech for "
    "the following text, using the specified voice.\n"
    "If no speaker tag is present, select a suitable voice on your own."
)
DEFAULT_SCENE = "Audio is recorded from a quiet room."
PROMPT_TEMPLATE = Path(__file__).with_name("prompt_template.jinja").read_text(encoding="utf-8")
AUDIO_IN_TOKEN = "<|AUDIO|>"  # a clip in a system or user turn (upstream's audio-in segment)


@dataclass(frozen=True)
class PromptVoice:
    """A reference voice as a prompt needs it: a cloned clip (frames + transcript) or a description."""

    description: str
    transcript: str | None = None
    frames: torch.Tensor | None = None  # [T, num_codebooks] codec codes
    is_clone: bool = False


@dataclass
class Prompt:
    """Chat messages plus the audio clips of their placeholders, in rendering order."""

    messages: list[dict]
    clips: list[torch.Tensor | None] = field(default_factory=list)


def scene_block(scene: str, speaker_lines: list[str]) -> str:
    parts = [p for p in (scene.strip(), "\n".join(speaker_lines)) if p]
    if not parts:
        return ""
    return "\n\n<|scene_desc_start|>\n" + "\n\n".join(parts) + "\n<|scene_desc_end|>"


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant_audio() -> dict:
    return {"role": "assistant", "content": [{"type": "audio"}]}


def build_prompt(
    chunk: str,
    *,
    transcript: str,
    voices: list[PromptVoice],
    scene: str,
    voices_in_system: bool = False,
    history: list[tuple[str, torch.Tensor]] | None = None,
) -> Prompt:
    """The conversation that asks the model to speak `chunk`.

    Voices go into the system block when asked to, or when any of them is only a description or a
    clip without a transcript. `transcript` is the whole text as given (speaker tags are counted
    over all of it, before normalization, as upstream does), `scene` the scene text ("" for none),
    `history` the earlier chunks' (text, frames) kept as context.
    """
    clips: list[torch.Tensor | None] = []
    turns: list[dict] = []
    system: str | list[dict] | None

    if not voices:
        tags = speaker_tags(transcript)
        if len(tags) > 1:
            lines = [f"{tag}: {'feminine' if i % 2 == 0 else 'masculine'}" for i, tag in enumerate(tags)]
            system = MULTISPEAKER_SYSTEM + scene_block(scene, lines)
        else:
            system = DEFAULT_SYSTEM + scene_block(scene, [])
    elif voices_in_system or any(not (v.is_clone and v.transcript) for v in voices):
        # Text and audio items: each clip is an audio-in segment right after its `SPEAKERi: `.
        marker = "\0"
        lines = []
        for i, voice in enumerate(voices):
            if voice.is_clone:
                lines.append(f"SPEAKER{i}: {marker}")
                clips.append(voice.frames)
            else:
                lines.append(f"SPEAKER{i}: {voice.description}")
        pieces = (DEFAULT_SYSTEM + scene_block(scene, lines)).split(marker)
        system = [{"type": "text", "text": pieces[0]}]
        for piece in pieces[1:]:
            system += [{"type": "audio"}] + ([{"type": "text", "text": piece}] if piece else [])
    else:
        # Upstream sends no system turn for in-context clones without a scene.
        system = DEFAULT_SYSTEM + scene_block(scene, []) if scene.strip() else None
        several = len(voices) > 1
        for i, voice in enumerate(voices):
            prefix = f"[SPEAKER{i}] " if several else ""
            turns += [_user(prefix + (voice.transcript or "")), _assistant_audio()]
            clips.append(voice.frames)

    for text, frames in history or []:
        turns += [_user(text), _assistant_audio()]
        clips.append(frames)

    head = [] if system is None else [{"role": "system", "content": system}]
    return Prompt(messages=[*head, *turns, _user(chunk)], clips=clips)


class PromptRenderer:
    """Renders prompts with `PROMPT_TEMPLATE` (upstream's layout) and builds the model's inputs."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def render(self, prompt: Prompt) -> str:
        """Upstream's prompt text, with one placeholder per audio clip (`<|AUDIO|>` or `<|AUDIO_OUT|>`)."""
        return self.processor.tokenizer.apply_chat_template(
            prompt.messages, chat_template=PROMPT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )

    def inputs(self, prompt: Prompt, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Token ids with each audio placeholder expanded to its clip's positions, and the clips' codes.

        Audio-in and audio-out clips alike become the processor's audio positions (`<|AUDIO_OUT|>` and
        delay tokens), which the native model fills with the clips' code embeddings and runs through its
        audio layers; upstream's model does the same with audio-in codes (`encode_audio_in_tokens`).
        The segment tokens around them (`<|audio_bos|>` or `<|audio_out_bos|>`) stay as rendered.
        """
        processor = self.processor
        pieces = re.split(f"{re.escape(processor.audio_token)}|{re.escape(AUDIO_IN_TOKEN)}", self.render(prompt))
        if len(pieces) - 1 != len(prompt.clips):
            raise ValueError(f"prompt has {len(pieces) - 1} audio placeholders but {len(prompt.clips)} clips")
        delayed = []
        for clip in prompt.clips:
            if clip is None:
                raise ValueError("prompt clip has no codes; encode the voice first")
            delayed.append(delay_frames(clip.long().cpu(), STREAM_BOS, STREAM_EOS))
        text = pieces[0]
        for codes, piece in zip(delayed, pieces[1:], strict=True):
            text += processor.get_audio_tokens(codes.shape[0]) + piece

        encoded = processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if delayed:
            audio = torch.cat(delayed)[None]
            inputs["audio_input_ids"] = audio
            inputs["audio_input_ids_mask"] = torch.ones(audio.shape[:2], dtype=torch.bool)
        return {k: v.to(device) for k, v in inputs.items()}
