"""One synthesis in progress: a plan's chunks generated in order, each with the earlier ones as
context, over the model holder's generator.

    run.frames() -> Iterator[frames [n, K]]         every chunk, new frames as they are complete
    run.chunk_frames(chunk, request=None)           one chunk (a live phrase brings its own request)
    run.codes() -> [T, K]; run.result(audio, decode_seconds) -> SynthesisResult
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.checkpoint import LoadedModel
from ..core.codes import generated_frames, stream_ended
from ..core.prompt import PromptRenderer, PromptVoice
from .models import ModelHolder
from .plan import Plan
from .prompts import VoicePrompts, chunk_prompt
from .request import Cancelled, Progress, SynthesisRequest, SynthesisResult

log = logging.getLogger(__name__)


class Stop:
    """Set when the request's own event or the holder's shutdown event is (an Event's is_set)."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


@dataclass
class Run:
    """A request and its plan (made once), the model it runs on, and the frames generated so far."""

    request: SynthesisRequest
    plan: Plan
    models: ModelHolder
    prompts: VoicePrompts
    loaded: LoadedModel
    seed: int
    model_load_seconds: float
    renderer: PromptRenderer
    stop: Stop  # set: the caller is gone, cancelled, or the process stops
    prompt_voices: list[PromptVoice] | None = None  # encoded when generation starts
    generation_seconds: float = 0.0
    first_audio_seconds: float | None = None
    history: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # (chunk text, its frames)
    progress: Progress | None = None
    cut_chunks: list[int] = field(default_factory=list)

    def codes(self) -> torch.Tensor:
        if not self.history:
            return torch.zeros((0, self.loaded.model.config.num_codebooks), dtype=torch.long)
        return torch.cat([f for _, f in self.history])

    def result(self, audio: np.ndarray, decode_seconds: float) -> SynthesisResult:
        codes, plan = self.codes(), self.plan
        return SynthesisResult(
            audio=audio, codes=codes, sample_rate=self.loaded.sample_rate, num_frames=int(codes.shape[0]),
            text=plan.text, chunks=list(plan.chunks), seed=self.seed, voices=list(plan.voice_names),
            model_load_seconds=self.model_load_seconds, generation_seconds=self.generation_seconds,
            decode_seconds=decode_seconds, first_audio_seconds=self.first_audio_seconds,
            # a clip sent with the request (after the named voices) is always cloned
            voice_kinds=[v.kind for v in plan.voices] + ["clone"] * (len(plan.voice_names) - len(plan.voices)),
            cut_chunks=tuple(self.cut_chunks),
        )

    def admission(self) -> AbstractContextManager:
        """A place with the generator (a busy engine says so before any work is done)."""
        return self.models.generator(self.loaded).admission()

    def encode_voices(self) -> None:
        """The run's voices as prompt voices (clones encoded, once a run)."""
        if self.prompt_voices is None:
            self.prompt_voices = self.prompts.voices(self.plan, self.request.reference, self.stop)

    def frames(self) -> Iterator[torch.Tensor]:
        """Generate every chunk in order, with earlier chunks as context; yields new frames as they
        are complete (per engine check with the fast engine, per chunk with the generate() path)."""
        started = time.perf_counter()
        loaded = self.loaded
        with self.admission():
            self.encode_voices()
            for chunk in self.plan.chunks:
                yield from self.chunk_frames(chunk)
                if self.progress is not None:
                    done = sum(f.shape[0] for _, f in self.history)
                    self.progress(len(self.history), len(self.plan.chunks),
                                  done * loaded.hop_length / loaded.sample_rate)
        self.generation_seconds = time.perf_counter() - started

    def chunk_frames(self, chunk: str, request: SynthesisRequest | None = None) -> Iterator[torch.Tensor]:
        """One chunk's new frames as they are complete, with the earlier chunks as context; once it
        has ended (not when closed early) it joins `history`. `request`: the run's, unless a live
        phrase brings its own text."""
        request = request or self.request
        loaded, stop = self.loaded, self.stop
        if stop.is_set():
            raise Cancelled("the request was cancelled")
        self.encode_voices()
        buffer = request.generation_chunk_buffer_size
        context = self.history if buffer is None else self.history[-buffer:] if buffer else []
        context = newest_within(context, self.models.settings.max_context_frames)
        prompt = chunk_prompt(request, self.plan, chunk, self.prompt_voices, context)
        inputs = self.renderer.inputs(prompt, loaded.device)
        columns: list[torch.Tensor] = []
        frames = torch.zeros((0, loaded.model.config.num_codebooks), dtype=torch.long)
        for piece in self.models.generator(loaded).generate(inputs, request.sampling, self.seed, stop):
            if stop.is_set():  # leaving the loop closes the generation: its slot is free
                raise Cancelled("the request was cancelled")
            columns.append(piece.cpu())
            sent, frames = frames.shape[0], generated_frames(torch.cat(columns))
            if frames.shape[0] > sent:
                yield frames[sent:]
        if columns and not stream_ended(torch.cat(columns)):  # max_new_tokens came first: cut
            self.cut_chunks.append(len(self.history))
            log.warning("chunk %d of %d reached max_new_tokens (%d) before its end; its speech is cut",
                        len(self.history) + 1, max(len(self.plan.chunks), len(self.history) + 1),
                        request.sampling.max_new_tokens)
        self.history.append((chunk, frames))


def newest_within(history: list[tuple[str, torch.Tensor]], max_frames: int) -> list[tuple[str, torch.Tensor]]:
    """The newest chunks of `history` whose frames add up to at most `max_frames` (MAX_CONTEXT_FRAMES)."""
    kept, total = 0, 0
    for _, frames in reversed(history):
        if total + frames.shape[0] > max_frames:
            break
        kept, total = kept + 1, total + frames.shape[0]
    return history[len(history) - kept:]
