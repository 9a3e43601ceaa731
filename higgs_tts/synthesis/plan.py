"""A request's plan, made once: what will be spoken, in which chunks, by which voices, in which scene.

    Plan(text, chunks, voices, scene, voice_names)   immutable; the service sizes the work from its
                                                     chunks, the synthesizer generates them

Everything downstream of `make_plan` reads the plan; nothing chunks or resolves voices again.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.prompt import DEFAULT_SCENE
from ..core.text import chunk_text, normalize_transcript, speakable
from ..core.voices import Voice, VoiceLibrary


class NothingToSpeak(ValueError):
    """The text normalizes to nothing the model can say (only punctuation, spaces, tags)."""


def spoken_text(text: str) -> str:
    """The normalized text, or NothingToSpeak: the one place that rule is decided."""
    normalized = normalize_transcript(text)
    if not speakable(normalized):
        raise NothingToSpeak("text has nothing to speak after normalization")
    return normalized


def has_speech(text: str) -> bool:
    """Whether spoken_text would find something to say."""
    try:
        spoken_text(text)
    except NothingToSpeak:
        return False
    return True


@dataclass(frozen=True)
class Plan:
    text: str  # normalized
    chunks: tuple[str, ...]
    voices: tuple[Voice, ...]  # the named voices, in speaker order
    scene: str
    voice_names: tuple[str, ...]  # the named voices, then a clip sent with the request ("uploaded")


def make_plan(request, library: VoiceLibrary) -> Plan:
    """The plan of a SynthesisRequest; an unknown voice (VoiceError) or nothing to speak fails here,
    before any work."""
    text = spoken_text(request.text)
    chunks = chunk_text(text, request.chunk_method, request.chunk_max_word_num, request.chunk_max_num_turns)
    voices = tuple(library.resolve(request.voices))
    scene = DEFAULT_SCENE if request.scene is None else request.scene
    names = tuple(v.name for v in voices) + ((request.reference.name,) if request.reference else ())
    return Plan(text=text, chunks=tuple(chunks), voices=voices, scene=scene, voice_names=names)
