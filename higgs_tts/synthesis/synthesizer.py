"""Text, voices and a scene in; 24 kHz speech out.

Long texts are generated chunk by chunk, in order, each chunk seeing the reference voices and the
earlier chunks as context; all codes are decoded once at the end so there are no seams.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch

from ..core.checkpoint import LoadedModel, ModelCache, load_processor
from ..core.codes import generated_frames, stream_ended
from ..core.prompt import PromptRenderer, PromptVoice
from ..core.sampling import MAX_SEED, ChunkParams, SamplingParams
from ..core.streaming import StreamingDecoder
from ..core.text import CHUNK_METHODS
from ..core.voice_cache import VoiceCodeCache
from ..core.voices import VoiceLibrary
from ..settings import Settings
from .events import Audio, ChunkEnd, Done, SynthesisEvent
from .generator import Generator, generator_kind, make_generator
from .live import LiveSynthesis
from .plan import Plan, make_plan
from .prompts import VoicePrompts, chunk_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceClip:
    """A voice sent with the request: 24 kHz mono audio, and its transcript when known.

    With a transcript it is an in-context example like a library voice; without one it goes into
    the system block.
    """

    audio: np.ndarray
    transcript: str | None = None
    name: str = "uploaded"


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    voices: str | list[str] | None = None  # "belinda,chadwick" = SPEAKER0, SPEAKER1
    scene: str | None = None  # None: the default scene; "": no scene
    chunk_method: str | None = None
    # core.sampling.ChunkParams' knobs, flat (their defaults and bounds are written there)
    chunk_max_word_num: int = ChunkParams.chunk_max_word_num
    chunk_max_num_turns: int = ChunkParams.chunk_max_num_turns
    generation_chunk_buffer_size: int | None = ChunkParams.generation_chunk_buffer_size  # None: every chunk
    ref_audio_in_system_message: bool = False
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None  # None: a random seed, reported in the result
    reference: ReferenceClip | None = None  # spoken by the speaker after the named voices

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("text must be a non-empty string")
        if self.chunk_method is not None and self.chunk_method not in CHUNK_METHODS:
            raise ValueError(
                f"chunk_method must be null or one of {', '.join(CHUNK_METHODS)}; got {self.chunk_method!r}"
            )
        ChunkParams(self.chunk_max_word_num, self.chunk_max_num_turns, self.generation_chunk_buffer_size)
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}; got {self.seed!r}")


class Cancelled(RuntimeError):
    """The caller cancelled the request; its engine slot has been given back."""


@dataclass
class SynthesisResult:
    audio: np.ndarray  # float32 mono
    codes: torch.Tensor  # [T, num_codebooks]: every chunk's frames, decoded together into `audio`
    sample_rate: int
    num_frames: int
    text: str  # the normalized text that was spoken
    chunks: list[str]
    seed: int
    voices: list[str]
    model_load_seconds: float
    generation_seconds: float
    decode_seconds: float
    first_audio_seconds: float | None = None  # streaming: from the call to the first audio chunk
    voice_kinds: list[str] = field(default_factory=list)  # per entry of `voices`: "clone" or "described"
    cut_chunks: tuple[int, ...] = ()  # chunks that reached max_new_tokens before the model ended them

    @property
    def duration_seconds(self) -> float:
        return len(self.audio) / float(self.sample_rate)


# Told after each chunk: (chunks done, chunks in all, seconds of audio generated so far).
Progress = Callable[[int, int, float], None]


class _Stop:
    """Set when the request's own event or the synthesizer's shutdown event is (an Event's is_set)."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


@dataclass
class Run:
    """One synthesis in progress: its request and plan (made once), and the frames generated so far."""

    request: SynthesisRequest
    plan: Plan
    loaded: LoadedModel
    seed: int
    model_load_seconds: float
    renderer: PromptRenderer
    prompt_voices: list[PromptVoice] | None = None  # encoded when generation starts
    generation_seconds: float = 0.0
    first_audio_seconds: float | None = None
    history: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # (chunk text, its frames)
    progress: Progress | None = None
    cut_chunks: list[int] = field(default_factory=list)
    stop: _Stop = field(default_factory=_Stop)  # set: the caller is gone, cancelled, or the process stops

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


class Synthesizer:
    """Holds the loaded model and its generator, and runs syntheses: a request is planned once
    (plan.py), its voices become prompt voices (prompts.py), its chunks are generated in order with
    the earlier ones as context, and its codes decoded once (or streamed). Live phrases: live.py.

    Requests may come from many threads at once: with the fast engine their chunks are decoded
    together by the scheduler; the generate() path takes them one at a time.
    """

    def __init__(self, settings: Settings | None = None, models: ModelCache | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.voices = VoiceLibrary(self.settings.voice_prompts_path)
        self._models = models or ModelCache()
        self.prompts = VoicePrompts(lambda: self.model()[0], VoiceCodeCache(
            self.settings.voice_cache_dir, max_bytes=self.settings.voice_cache_max_bytes))
        self._generator_lock = threading.Lock()
        # One reference encoding at a time: its peak (the codec's activations over the whole clip,
        # ~6 MB per second of audio with the tiny checkpoint on a CPU) is then paid once, not once per
        # concurrent request; the codes are cached, so a voice is encoded once anyway.
        self._generator: Generator | None = None
        self._generator_model = None  # the model the generator was made for
        self._stopping = threading.Event()  # set by stop_all(): every generation ends at its next step

    # -- the model and its generator ------------------------------------------------------------

    def generator_kind(self, loaded: LoadedModel) -> str:
        """'fast' (our engine) or 'generate' (transformers' generate())."""
        return generator_kind(self.settings, loaded.device)

    def generator(self, loaded: LoadedModel) -> Generator:
        """The generator for the loaded model (made on first use; a new model gets a new one)."""
        with self._generator_lock:
            if self._generator is None or self._generator_model is not loaded.model:
                self._close_generator()
                self._generator, self._generator_model = make_generator(self.settings, loaded.model), loaded.model
            return self._generator

    def engine_load(self) -> tuple[int, int, int]:
        """(running sequences, waiting sequences, admitted requests); zeros before the first request."""
        generator = self._generator
        return (0, 0, 0) if generator is None else generator.load()

    def stop_all(self) -> None:
        """End every generation at its next step (Cancelled), now and from now on: the process is
        shutting down, and nothing should hold it."""
        self._stopping.set()

    def _close_generator(self) -> None:
        if self._generator is not None:
            self._generator.close()
            self._generator = self._generator_model = None

    def prepare(self) -> None:
        """Load the model and start the generator (the engine captures its CUDA graphs), so that
        the first request waits for neither."""
        loaded, _ = self.model()
        self.generator(loaded)

    def model(self) -> tuple[LoadedModel, bool]:
        """The loaded model and whether this call loaded it."""
        return self._models.get(self.settings)

    def loaded_model(self) -> LoadedModel | None:
        """The model if it is loaded; never loads."""
        return self._models.peek(self.settings)

    def unload(self) -> bool:
        """Free the model (after a long idle time); the next request loads it again."""
        with self._generator_lock:
            self._close_generator()
            return self._models.unload()

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

    @torch.inference_mode()
    def decode(self, frames: torch.Tensor) -> np.ndarray:
        """Waveform of `[T, num_codebooks]` frames: exactly T * hop samples."""
        loaded, _ = self.model()
        if frames.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        codes = frames.transpose(0, 1)[None].to(loaded.device)
        audio = loaded.codec.decode(codes).audio_values
        return audio.reshape(-1).float().cpu().numpy()

    # -- synthesis ---------------------------------------------------------------------------

    def synthesize(self, request: SynthesisRequest, cancel: threading.Event | None = None,
                   progress: Progress | None = None, plan: Plan | None = None) -> SynthesisResult:
        """The whole clip. Setting `cancel` stops generation within one engine burst (Cancelled);
        `progress` is called after each chunk. `plan`: the request's, when the caller has made it."""
        run = self.start(request, cancel, plan)
        run.progress = progress
        for _ in self._frames(run):
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
        for frames in chain(self._frames(run), [None]):  # None: generation has ended
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
            request=request, plan=plan, loaded=loaded, renderer=PromptRenderer(loaded.processor),
            seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
            model_load_seconds=model_load_seconds if model_load_seconds >= 0.001 else 0.0,
            stop=_Stop(cancel, self._stopping),
        )

    def encode_voices(self, run: Run) -> None:
        """The run's voices as prompt voices (clones encoded, once a run)."""
        if run.prompt_voices is None:
            run.prompt_voices = self.prompts.voices(run.plan, run.request.reference)

    def _frames(self, run: Run) -> Iterator[torch.Tensor]:
        """Generate every chunk in order, with earlier chunks as context; yields new frames as they
        are complete (per engine check with the fast engine, per chunk with the generate() path)."""
        started = time.perf_counter()
        loaded = run.loaded
        with self.generator(loaded).admission():  # a busy engine says so before any work is done
            self.encode_voices(run)
            for chunk in run.plan.chunks:
                yield from self.chunk_frames(run, chunk)
                if run.progress is not None:
                    done = sum(f.shape[0] for _, f in run.history)
                    run.progress(len(run.history), len(run.plan.chunks),
                                 done * loaded.hop_length / loaded.sample_rate)
        run.generation_seconds = time.perf_counter() - started

    def chunk_frames(self, run: Run, chunk: str, request: SynthesisRequest | None = None) -> Iterator[torch.Tensor]:
        """One chunk's new frames as they are complete, with the earlier chunks as context; once it
        has ended (not when closed early) it joins `run.history`. `request`: the run's, unless a live
        phrase brings its own text."""
        request = request or run.request
        loaded = run.loaded
        stop = run.stop  # start() gives every run the caller's event and the shutdown event
        if stop.is_set():
            raise Cancelled("the request was cancelled")
        self.encode_voices(run)
        buffer = request.generation_chunk_buffer_size
        context = run.history if buffer is None else run.history[-buffer:] if buffer else []
        context = _newest_within(context, self.settings.max_context_frames)
        prompt = chunk_prompt(request, run.plan, chunk, run.prompt_voices, context)
        inputs = run.renderer.inputs(prompt, loaded.device)
        columns: list[torch.Tensor] = []
        frames = torch.zeros((0, loaded.model.config.num_codebooks), dtype=torch.long)
        for piece in self.generator(loaded).generate(inputs, request.sampling, run.seed, stop):
            if stop.is_set():  # leaving the loop closes the generation: its slot is free
                raise Cancelled("the request was cancelled")
            columns.append(piece.cpu())
            sent, frames = frames.shape[0], generated_frames(torch.cat(columns))
            if frames.shape[0] > sent:
                yield frames[sent:]
        if columns and not stream_ended(torch.cat(columns)):  # max_new_tokens came first: cut
            run.cut_chunks.append(len(run.history))
            log.warning("chunk %d of %d reached max_new_tokens (%d) before its end; its speech is cut",
                        len(run.history) + 1, max(len(run.plan.chunks), len(run.history) + 1),
                        request.sampling.max_new_tokens)
        run.history.append((chunk, frames))


def _newest_within(history: list[tuple[str, torch.Tensor]], max_frames: int) -> list[tuple[str, torch.Tensor]]:
    """The newest chunks of `history` whose frames add up to at most `max_frames` (MAX_CONTEXT_FRAMES)."""
    kept, total = 0, 0
    for _, frames in reversed(history):
        if total + frames.shape[0] > max_frames:
            break
        kept, total = kept + 1, total + frames.shape[0]
    return history[len(history) - kept:]
