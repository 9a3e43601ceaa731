"""Text, voices and a scene in; 24 kHz speech out.

Long texts are generated chunk by chunk, in order, each chunk seeing the reference voices and the
earlier chunks as context; all codes are decoded once at the end so there are no seams. The
synthesizer is the model holder (models.py) with the library voices and their prompt voices; a
request is planned once (plan.py) and runs as a Run (run.py). Live phrases: live.py.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from itertools import chain

import numpy as np
import torch

from ..core.checkpoint import ModelCache, load_processor
from ..core.prompt import PromptRenderer
from ..core.sampling import MAX_SEED
from ..core.streaming import StreamingDecoder
from ..core.voice_cache import VoiceCodeCache
from ..core.voices import VoiceLibrary
from ..settings import Settings
from .events import Audio, ChunkEnd, Done, SynthesisEvent
from .live import LiveSynthesis
from .models import ModelHolder
from .plan import Plan, make_plan
from .prompts import VoicePrompts, chunk_prompt
from .request import Cancelled, Progress, ReferenceClip, SynthesisRequest, SynthesisResult
from .run import Run, Stop

log = logging.getLogger(__name__)

__all__ = ["Cancelled", "Progress", "ReferenceClip", "Run", "SynthesisRequest", "SynthesisResult", "Synthesizer"]


class Synthesizer(ModelHolder):
    """The model holder (models.py) that runs syntheses: a request is planned once (plan.py), its
    voices become prompt voices (prompts.py), and it runs (run.py): its chunks generated in order
    with the earlier ones as context, its codes decoded once (synthesize) or as they come (stream)."""

    def __init__(self, settings: Settings | None = None, models: ModelCache | None = None) -> None:
        super().__init__(settings, models)
        self.voices = VoiceLibrary(self.settings.voice_prompts_path)
        self.prompts = VoicePrompts(lambda: self.model()[0], VoiceCodeCache(
            self.settings.voice_cache_dir, max_bytes=self.settings.voice_cache_max_bytes))

    # -- plans and prompts -----------------------------------------------------------------------

    def plan(self, request: SynthesisRequest) -> Plan:
        """The request's plan (chunks, voices, scene): made once, read by everything after."""
        return make_plan(request, self.voices)

    def render_prompt(self, request: SynthesisRequest) -> str:
        """The first chunk's rendered prompt (audio as placeholders), without loading the model."""
        plan = self.plan(request)
        prompt = chunk_prompt(request, plan, plan.chunks[0], VoicePrompts.described(plan), [])
        return PromptRenderer(load_processor(self.settings)).render(prompt)

    def encode_reference(self, samples: np.ndarray) -> torch.Tensor:
        """Codec frames `[T, num_codebooks]` (on CPU) of 24 kHz mono reference audio, cached by content."""
        return self.prompts.encode(samples)

    def forget_reference(self, samples: np.ndarray) -> int:
        """Drop every cached code of this reference audio (memory and disk); returns files removed."""
        return self.prompts.forget(samples)

    # -- synthesis ---------------------------------------------------------------------------

    def synthesize(self, request: SynthesisRequest, cancel: threading.Event | None = None,
                   progress: Progress | None = None, plan: Plan | None = None) -> SynthesisResult:
        """The whole clip. Setting `cancel` stops generation within one engine burst (Cancelled);
        `progress` is called after each chunk. `plan`: the request's, when the caller has made it."""
        run = self.start(request, cancel, plan)
        run.progress = progress
        for _ in run.frames():
            pass
        started = time.perf_counter()
        audio = self.decode(run.codes())
        return run.result(audio, time.perf_counter() - started)

    def stream(self, request: SynthesisRequest, decoder_options: dict | None = None,
               cancel: threading.Event | None = None, plan: Plan | None = None) -> Iterator[SynthesisEvent]:
        """Typed events while generating (events.py): Audio pieces, a ChunkEnd after each text
        chunk's generation, and Done with the SynthesisResult last. Setting `cancel` (e.g. from
        another thread when the listener is gone) ends it with Cancelled.

        The pieces come from a StreamingDecoder: together they equal one decode of all codes
        within its stated tolerance. The result's `audio` is their concatenation.
        """
        started = time.perf_counter()
        run = self.start(request, cancel, plan)
        ended: list[ChunkEnd] = []  # told by _frames after each chunk, handed out before the next frames
        run.progress = lambda done, total, seconds: ended.append(ChunkEnd(done, total, seconds))
        decoder = StreamingDecoder(self.decode, hop=run.loaded.hop_length, **(decoder_options or {}))
        decode_seconds = 0.0
        pieces: list[np.ndarray] = []
        for frames in chain(run.frames(), [None]):  # None: generation has ended
            yield from ended
            ended.clear()
            mark = time.perf_counter()
            ready = decoder.push(frames) if frames is not None else [decoder.finish()]
            decode_seconds += time.perf_counter() - mark
            for piece in ready:
                if len(piece):
                    if not pieces:
                        run.first_audio_seconds = time.perf_counter() - started
                    pieces.append(piece)
                    yield Audio(piece)
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        yield Done(run.result(audio, decode_seconds))

    def live(self, request: SynthesisRequest) -> LiveSynthesis:
        """Phrases that arrive one at a time (a live session), spoken in one voice: see LiveSynthesis.
        `request.text` is only a placeholder; its voices, scene, sampling and seed hold for every phrase."""
        return LiveSynthesis(self, request)

    def start(self, request: SynthesisRequest, cancel: threading.Event | None = None,
              plan: Plan | None = None) -> Run:
        """A run of the request: the model loaded, the plan made (unless given), the seed chosen."""
        # Time spent getting the model: its loading, or waiting for a load already under way.
        started = time.perf_counter()
        loaded, _ = self.model()
        model_load_seconds = time.perf_counter() - started
        plan = plan or self.plan(request)
        log.info("synthesizing %d chars in %d chunk(s) with %d voice(s)", len(plan.text), len(plan.chunks),
                 len(plan.voices))
        return Run(
            request=request, plan=plan, models=self, prompts=self.prompts, loaded=loaded,
            renderer=PromptRenderer(loaded.processor),
            seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
            model_load_seconds=model_load_seconds if model_load_seconds >= 0.001 else 0.0,
            stop=Stop(cancel, self.stopping),
        )
