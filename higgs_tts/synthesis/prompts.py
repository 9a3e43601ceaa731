"""Voices as a prompt needs them, and the prompt of one chunk.

    VoicePrompts.encode(samples)        a clip's codec frames [T, K] (cached by content: memory, disk)
    VoicePrompts.voices(plan, clip)     every voice of a plan as a PromptVoice (clones encoded)
    chunk_prompt(...)                   the Prompt of one chunk, with its voices, scene and context
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from ..core.checkpoint import LoadedModel
from ..core.encoding import ENCODING, encode_clip
from ..core.prompt import Prompt, PromptVoice, build_prompt
from ..core.voice_cache import VoiceCodeCache
from ..core.voices import Voice
from .plan import Plan
from .request import Cancelled

STOP_POLL_SECONDS = 0.1  # how often a request waiting on an encode looks at its stop event


class Stoppable(Protocol):
    """A request's stop (a threading.Event, run.Stop): set when the caller is gone or the process stops."""

    def is_set(self) -> bool: ...


class VoicePrompts:
    def __init__(self, model: Callable[[], LoadedModel], cache: VoiceCodeCache) -> None:
        self._model, self._cache = model, cache
        # One reference at a time, always on this one thread: a long clip's encode is the memory peak, and
        # glibc gives each thread its own heap (arena), so encodes on many request threads would each leave
        # their peak in a heap of their own; on one thread each encode reuses the last one's memory.
        self._encoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="higgs-encode")

    def encode(self, samples: np.ndarray, stop: Stoppable | None = None) -> torch.Tensor:
        """Codec frames `[T, num_codebooks]` (on CPU) of 24 kHz mono reference audio, cached by content.
        `stop` set while it waits its turn or is encoded: Cancelled at once (an encode under way still
        finishes on the encode thread, and its codes are cached for the next request)."""
        loaded = self._model()
        key = VoiceCodeCache.key(samples, f"{loaded.codec_fingerprint}:{ENCODING}")
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        encoding = self._encoder.submit(self._encode, loaded, samples, key)
        while True:
            try:
                return encoding.result(timeout=None if stop is None else STOP_POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    encoding.cancel()  # one still queued never runs
                    raise Cancelled("the request was cancelled") from None

    @torch.inference_mode()
    def _encode(self, loaded: LoadedModel, samples: np.ndarray, key: str) -> torch.Tensor:
        if (cached := self._cache.get(key)) is not None:  # encoded while this one waited
            return cached
        features = loaded.processor.feature_extractor(samples, sampling_rate=loaded.sample_rate, return_tensors="pt")
        codes = encode_clip(loaded.codec, features["input_values"].to(loaded.device))  # padded as upstream
        frames = codes[0].transpose(0, 1).long().cpu()
        self._cache.put(key, frames)
        return frames

    def forget(self, samples: np.ndarray) -> int:
        """Drop every cached code of this reference audio (memory and disk); returns files removed."""
        return self._cache.forget(samples)

    def voice(self, voice: Voice, stop: Stoppable | None = None) -> PromptVoice:
        if voice.kind != "clone":
            return PromptVoice(description=voice.description)
        frames = self.encode(voice.load_audio(), stop)
        return PromptVoice(description=voice.description, transcript=voice.transcript, frames=frames, is_clone=True)

    def voices(self, plan: Plan, clip=None, stop: Stoppable | None = None) -> list[PromptVoice]:
        """The plan's voices, then `clip` (a ReferenceClip sent with the request), clones encoded; `stop`:
        see `encode`."""
        voices = [self.voice(v, stop) for v in plan.voices]
        if clip is not None:
            transcript = (clip.transcript or "").strip() or None
            voices.append(PromptVoice(description=clip.name, transcript=transcript,
                                      frames=self.encode(clip.audio, stop), is_clone=True))
        return voices

    @staticmethod
    def described(plan: Plan) -> list[PromptVoice]:
        """The plan's voices without audio (a prompt shown with placeholders; nothing encoded)."""
        return [PromptVoice(description=v.description, transcript=v.transcript, is_clone=v.kind == "clone")
                for v in plan.voices]


def chunk_prompt(request, plan: Plan, chunk: str, voices: list[PromptVoice],
                 history: list[tuple[str, torch.Tensor]]) -> Prompt:
    return build_prompt(
        chunk,
        transcript=request.text,  # upstream counts speaker tags before normalization
        voices=voices,
        scene=plan.scene,
        voices_in_system=request.ref_audio_in_system_message,
        history=history,
    )
