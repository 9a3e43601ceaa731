"""Encoding generated audio into the formats the API offers."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

# format -> (libsndfile container, subtype, content type, file extension)
FORMATS = {
    "wav": ("WAV", "PCM_16", "audio/wav", "wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac", "flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg", "mp3"),
    "opus": ("OGG", "OPUS", "audio/ogg; codecs=opus", "opus"),
    "pcm": (None, None, "audio/pcm", "pcm"),  # raw signed 16-bit little-endian mono
}


def content_type(fmt: str) -> str:
    return FORMATS[fmt][2]


def extension(fmt: str) -> str:
    return FORMATS[fmt][3]


def to_pcm16(samples: np.ndarray) -> bytes:
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Bytes of the audio in `fmt` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    container, subtype, _, _ = FORMATS[fmt]
    if container is None:
        return to_pcm16(samples)
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(samples, dtype=np.float32), sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()
