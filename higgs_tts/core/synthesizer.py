"""Text, voices and a scene in; 24 kHz speech out.

Long texts are generated chunk by chunk, in order, each chunk seeing the reference voices and the
earlier chunks as context; all codes are decoded once at the end so there are no seams.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..settings import Settings
from .checkpoint import LoadedModel, ModelCache, load_processor
from .codes import generated_frames
from .generation import SamplingParams, generate_reference
from .prompt import DEFAULT_SCENE, Prompt, PromptRenderer, PromptVoice, build_prompt
from .text import CHUNK_METHODS, chunk_text, normalize_transcript
from .voice_cache import VoiceCodeCache
from .voices import Voice, VoiceLibrary

log = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1


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
    chunk_max_word_num: int = 200
    chunk_max_num_turns: int = 1
    generation_chunk_buffer_size: int | None = None  # None keeps every earlier chunk
    ref_audio_in_system_message: bool = False
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None  # None: a random seed, reported in the result
    reference: ReferenceClip | None = None  # spoken by the speaker after the named voices

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("text must be a non-empty string")
        if self.chunk_method not in CHUNK_METHODS:
            raise ValueError(
                f"chunk_method must be one of null, 'speaker', 'word', 'sentence'; got {self.chunk_method!r}"
            )
        if not (isinstance(self.chunk_max_word_num, int) and self.chunk_max_word_num >= 1):
            raise ValueError(f"chunk_max_word_num must be an integer >= 1; got {self.chunk_max_word_num!r}")
        if not (isinstance(self.chunk_max_num_turns, int) and self.chunk_max_num_turns >= 1):
            raise ValueError(f"chunk_max_num_turns must be an integer >= 1; got {self.chunk_max_num_turns!r}")
        buffer = self.generation_chunk_buffer_size
        if buffer is not None and not (isinstance(buffer, int) and buffer >= 0):
            raise ValueError(f"generation_chunk_buffer_size must be an integer >= 0 or null; got {buffer!r}")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}; got {self.seed!r}")


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

    @property
    def duration_seconds(self) -> float:
        return len(self.audio) / float(self.sample_rate)


class Synthesizer:
    """Owns the loaded model, the voice library and the voice-code cache; one request at a time."""

    def __init__(self, settings: Settings | None = None, models: ModelCache | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.voices = VoiceLibrary(self.settings.voice_prompts_path)
        self._models = models or ModelCache()
        self._voice_codes = VoiceCodeCache(self.settings.voice_cache_dir)
        self._lock = threading.Lock()
        self._engine = None  # (model, FastEngine) for the loaded model

    def engine_name(self, loaded: LoadedModel) -> str:
        """'fast' or 'reference': the setting, with 'auto' meaning fast on CUDA."""
        if self.settings.engine != "auto":
            return self.settings.engine
        return "fast" if loaded.device.type == "cuda" else "reference"

    def _generate(self, loaded: LoadedModel, inputs: dict, params: SamplingParams, seed: int) -> torch.Tensor:
        if self.engine_name(loaded) == "reference":
            return generate_reference(loaded.model, inputs, params, seed)
        from ..engine.engine import EngineRequest, FastEngine

        if self._engine is None or self._engine[0] is not loaded.model:
            self._engine = (loaded.model, FastEngine(loaded.model))
        return self._engine[1].generate([EngineRequest(inputs, params, seed)])[0]

    def model(self) -> tuple[LoadedModel, bool]:
        """The loaded model and whether this call loaded it."""
        return self._models.get(self.settings)

    def loaded_model(self) -> LoadedModel | None:
        """The model if it is loaded; never loads."""
        return self._models.peek(self.settings)

    def unload(self) -> bool:
        """Free the model (after a long idle time); the next request loads it again."""
        with self._lock:
            self._engine = None
            return self._models.unload()

    # -- prompts -----------------------------------------------------------------------------

    def _plan(self, request: SynthesisRequest) -> tuple[str, list[str], list[Voice], str]:
        text = normalize_transcript(request.text)
        if not text:
            raise ValueError("text has nothing to speak after normalization")
        chunks = chunk_text(text, request.chunk_method, request.chunk_max_word_num, request.chunk_max_num_turns)
        voices = self.voices.resolve(request.voices)
        scene = DEFAULT_SCENE if request.scene is None else request.scene
        return text, chunks, voices, scene

    def _prompt(self, request, text, chunk, voices: list[PromptVoice], scene, history) -> Prompt:
        return build_prompt(
            chunk,
            transcript=text,
            voices=voices,
            scene=scene,
            voices_in_system=request.ref_audio_in_system_message,
            history=history,
        )

    def render_prompt(self, request: SynthesisRequest) -> str:
        """The first chunk's rendered prompt (audio as placeholders), without loading the model."""
        text, chunks, voices, scene = self._plan(request)
        prompt_voices = [
            PromptVoice(description=v.description, transcript=v.transcript, is_clone=v.kind == "clone")
            for v in voices
        ]
        prompt = self._prompt(request, text, chunks[0], prompt_voices, scene, [])
        return PromptRenderer(load_processor(self.settings)).render(prompt)

    # -- audio -------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_reference(self, samples: np.ndarray) -> torch.Tensor:
        """Codec frames `[T, num_codebooks]` (on CPU) of 24 kHz mono reference audio, cached by content."""
        loaded, _ = self.model()
        key = VoiceCodeCache.key(samples, loaded.codec_fingerprint)
        cached = self._voice_codes.get(key)
        if cached is not None:
            return cached
        features = loaded.processor.feature_extractor(
            samples, sampling_rate=loaded.sample_rate, return_tensors="pt"
        )
        codes = loaded.codec.encode(features["input_values"].to(loaded.device)).audio_codes
        frames = codes[0].transpose(0, 1).long().cpu()
        self._voice_codes.put(key, frames)
        return frames

    def _prompt_voice(self, voice: Voice) -> PromptVoice:
        if voice.kind != "clone":
            return PromptVoice(description=voice.description)
        frames = self.encode_reference(voice.load_audio())
        return PromptVoice(description=voice.description, transcript=voice.transcript, frames=frames, is_clone=True)

    def _reference_voice(self, clip: ReferenceClip) -> PromptVoice:
        frames = self.encode_reference(clip.audio)
        transcript = (clip.transcript or "").strip() or None
        return PromptVoice(description=clip.name, transcript=transcript, frames=frames, is_clone=True)

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

    def synthesize(self, request: SynthesisRequest) -> SynthesisResult:
        with self._lock:
            return self._synthesize(request)

    def _synthesize(self, request: SynthesisRequest) -> SynthesisResult:
        # Time spent getting the model: its loading, or waiting for a load already under way.
        started = time.perf_counter()
        loaded, _ = self.model()
        model_load_seconds = time.perf_counter() - started
        text, chunks, voices, scene = self._plan(request)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        renderer = PromptRenderer(loaded.processor)
        log.info("synthesizing %d chars in %d chunk(s) with %d voice(s)", len(text), len(chunks), len(voices))

        started = time.perf_counter()
        prompt_voices = [self._prompt_voice(v) for v in voices]
        if request.reference is not None:
            prompt_voices.append(self._reference_voice(request.reference))
        history: list[tuple[str, torch.Tensor]] = []
        buffer = request.generation_chunk_buffer_size
        for chunk in chunks:
            context = history if buffer is None else history[-buffer:] if buffer else []
            prompt = self._prompt(request, text, chunk, prompt_voices, scene, context)
            inputs = renderer.inputs(prompt, loaded.device)
            columns = self._generate(loaded, inputs, request.sampling, seed)
            history.append((chunk, generated_frames(columns.cpu())))
        generation_seconds = time.perf_counter() - started

        started = time.perf_counter()
        frames = torch.cat([f for _, f in history]) if history else torch.zeros((0, 8), dtype=torch.long)
        audio = self.decode(frames)
        decode_seconds = time.perf_counter() - started

        return SynthesisResult(
            audio=audio,
            codes=frames,
            sample_rate=loaded.sample_rate,
            num_frames=int(frames.shape[0]),
            text=text,
            chunks=chunks,
            seed=seed,
            voices=[v.name for v in voices] + ([request.reference.name] if request.reference else []),
            model_load_seconds=model_load_seconds if model_load_seconds >= 0.001 else 0.0,
            generation_seconds=generation_seconds,
            decode_seconds=decode_seconds,
        )
