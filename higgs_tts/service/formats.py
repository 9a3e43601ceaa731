"""The output formats the API offers, defined once (the schema's choices come from FORMATS),
and encoding generated audio into them."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf


@dataclass(frozen=True)
class Format:
    container: str | None  # libsndfile's (ADTS: PyAV's encoder; None: raw samples)
    subtype: str | None
    content_type: str
    extension: str
    streams: bool = False  # sent while it is generated (HTTP), not only when the clip is done


FORMATS = {
    "wav": Format("WAV", "PCM_16", "audio/wav", "wav", streams=True),
    "flac": Format("FLAC", "PCM_16", "audio/flac", "flac"),
    "mp3": Format("MP3", "MPEG_LAYER_III", "audio/mpeg", "mp3"),
    "opus": Format("OGG", "OPUS", "audio/ogg; codecs=opus", "opus"),
    "aac": Format("ADTS", "aac", "audio/aac", "aac"),  # encoded with PyAV (libsndfile has no AAC)
    "pcm": Format(None, None, "audio/pcm", "pcm", streams=True),  # raw signed 16-bit little-endian mono
}


def content_type(fmt: str) -> str:
    return FORMATS[fmt].content_type


def extension(fmt: str) -> str:
    return FORMATS[fmt].extension


def streams(fmt: str) -> bool:
    return FORMATS[fmt].streams


def pieces(data, size: int):
    """`data` (bytes or samples) in consecutive slices of at most `size`."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def to_pcm16(samples: np.ndarray) -> bytes:
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def _encode_aac(samples: np.ndarray, sample_rate: int) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="adts") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.asarray(samples, dtype=np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length (sizes set to the maximum)."""
    import struct

    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
            sample_rate * 2, 2, 16) + b"data" + struct.pack("<I", unknown))


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Bytes of the audio in `fmt` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    container, subtype = FORMATS[fmt].container, FORMATS[fmt].subtype
    if container is None:
        return to_pcm16(samples)
    if container == "ADTS":
        return _encode_aac(samples, sample_rate)
    buffer = io.BytesIO()
    if subtype == "PCM_16":  # the same 16-bit samples as the pcm format and streamed items
        samples = np.frombuffer(to_pcm16(samples), dtype="<i2")
    else:
        samples = np.asarray(samples, dtype=np.float32)
    sf.write(buffer, samples, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()
