"""Conversations for every reference case, rendered with the checkpoint's chat template.

The strings are the reference pipeline's, byte for byte (docs/model-facts.md, section 4). The scene block
is written into the system turn here, because the native template's `scene` role cannot express
a block that starts with a voice line; the rendered text is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
AUDIO_PLACEHOLDER = "<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>"


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
    clip without a transcript. `transcript` is the whole normalized text (speaker tags are counted
    over all of it), `scene` the scene text ("" for none), `history` the earlier chunks'
    (text, frames) kept as context.
    """
    clips: list[torch.Tensor | None] = []
    turns: list[dict] = []

    if not voices:
        tags = speaker_tags(transcript)
        if len(tags) > 1:
            lines = [f"{tag}: {'feminine' if i % 2 == 0 else 'masculine'}" for i, tag in enumerate(tags)]
            system = MULTISPEAKER_SYSTEM + scene_block(scene, lines)
        else:
            system = DEFAULT_SYSTEM + scene_block(scene, [])
    elif voices_in_system or any(not (v.is_clone and v.transcript) for v in voices):
        lines = []
        for i, voice in enumerate(voices):
            if voice.is_clone:
                lines.append(f"SPEAKER{i}: {AUDIO_PLACEHOLDER}")
                clips.append(voice.frames)
            else:
                lines.append(f"SPEAKER{i}: {voice.description}")
        system = DEFAULT_SYSTEM + scene_block(scene, lines)
    else:
        system = DEFAULT_SYSTEM + scene_block(scene, [])
        several = len(voices) > 1
        for i, voice in enumerate(voices):
            prefix = f"[SPEAKER{i}] " if several else ""
            turns += [_user(prefix + (voice.transcript or "")), _assistant_audio()]
            clips.append(voice.frames)

    for text, frames in history or []:
        turns += [_user(text), _assistant_audio()]
        clips.append(frames)

    messages = [{"role": "system", "content": system}, *turns, _user(chunk)]
    return Prompt(messages=messages, clips=clips)


class PromptRenderer:
    """Renders prompts through the processor's chat template and builds the model's inputs."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def render(self, prompt: Prompt) -> str:
        """The chat template's output, with one placeholder per audio clip."""
        return self.processor.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)

    def inputs(self, prompt: Prompt, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Token ids with each audio placeholder expanded to its clip's positions, and the clips' codes."""
        processor = self.processor
        pieces = self.render(prompt).split(processor.audio_token)
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
