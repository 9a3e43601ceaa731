"""The output formats the API offers, defined once (the schema's choices come from FORMATS),
and encoding generated audio into them."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf


@dataclass(frozen=True)
class Format:
    container: str | None  # libsndfile's, for whole clips (ADTS: PyAV's encoder; None: raw samples)
    subtype: str | None
    content_type: str
    extension: str
    # PyAV's muxer and encoder, for audio sent while it is generated (None: PCM written directly)
    av_format: str | None = None
    av_codec: str | None = None
    # About how many bytes a second of speech takes (for sizing a result before generating it):
    # PCM's 48,000; the compressed ones about 1.5 x what white noise measured at their defaults.
    bytes_per_second: int = 48_000


FORMATS = {
    "wav": Format("WAV", "PCM_16", "audio/wav", "wav"),
    "flac": Format("FLAC", "PCM_16", "audio/flac", "flac", "flac", "flac"),
    "mp3": Format("MP3", "MPEG_LAYER_III", "audio/mpeg", "mp3", "mp3", "libmp3lame", bytes_per_second=8_000),
    "opus": Format("OGG", "OPUS", "audio/ogg; codecs=opus", "opus", "ogg", "libopus", bytes_per_second=6_000),
    # libsndfile has no AAC: PyAV for both
    "aac": Format("ADTS", "aac", "audio/aac", "aac", "adts", "aac", bytes_per_second=12_000),
    "pcm": Format(None, None, "audio/pcm", "pcm"),  # raw signed 16-bit little-endian mono
}
# Ogg pages are cut every 100 ms (ffmpeg's default is 1 s), so streamed opus leaves in small steps.
OGG_PAGE_MICROSECONDS = 100_000
# A clip with no samples (the model ended at once) is sent as this much silence, so every reply is a
# file players and decoders open (mp3 and aac encoders write nothing at all for no samples).
EMPTY_CLIP_SECONDS = 0.04


def silence_if_empty(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    return samples if len(samples) else np.zeros(round(EMPTY_CLIP_SECONDS * sample_rate), dtype=np.float32)


def content_type(fmt: str) -> str:
    return FORMATS[fmt].content_type


def bytes_per_second(fmt: str) -> int:
    return FORMATS[fmt].bytes_per_second


def extension(fmt: str) -> str:
    return FORMATS[fmt].extension


def streams(fmt: str) -> bool:
    """Whether `fmt` can be sent while it is generated (every format can; speed changes cannot)."""
    return fmt in FORMATS


def pieces(data, size: int):
    """`data` (bytes or samples) in consecutive slices of at most `size`."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def to_pcm16(samples: np.ndarray) -> bytes:
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


class _Sink(io.RawIOBase):
    """A write-only file for PyAV's muxer: what it writes is collected until taken."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


class StreamEncoder:
    """Audio in `fmt`, encoded piece by piece as it is generated: `push(samples)` returns the bytes
    ready so far, `finish()` the rest. Their concatenation is one valid file of the whole audio.

    The compressed formats go through PyAV (ffmpeg) into a non-seekable sink, so every packet is
    written out as soon as the muxer has it; WAV gets a header for unknown length, then PCM.
    """

    def __init__(self, fmt: str, sample_rate: int) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(FORMATS)}; got {fmt!r}")
        self.fmt, self.sample_rate = fmt, sample_rate
        self._header = wav_stream_header(sample_rate) if fmt == "wav" else b""
        self._container = self._stream = None
        self._pushed = 0  # samples so far
        spec = FORMATS[fmt]
        if spec.av_format is not None:
            import av

            self._sink = _Sink()
            options = {"page_duration": str(OGG_PAGE_MICROSECONDS)} if spec.av_format == "ogg" else {}
            self._container = av.open(self._sink, mode="w", format=spec.av_format, options=options)
            self._stream = self._container.add_stream(spec.av_codec, rate=sample_rate, layout="mono")

    def push(self, samples: np.ndarray) -> bytes:
        self._pushed += len(samples)
        if self._container is None:
            head, self._header = self._header, b""
            return head + to_pcm16(samples)
        import av

        if len(samples):
            frame = av.AudioFrame.from_ndarray(np.asarray(samples, dtype=np.float32)[None, :], format="flt",
                                               layout="mono")
            frame.sample_rate = self.sample_rate
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        tail = self.push(silence_if_empty(np.zeros(0, dtype=np.float32), self.sample_rate)) if not self._pushed else b""
        if self._container is None:
            head, self._header = self._header, b""
            return tail + head
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self.close()
        return tail + self._sink.take()

    def close(self) -> None:
        if self._container is not None:
            container, self._container = self._container, None
            container.close()


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
    samples = silence_if_empty(samples, sample_rate)
    if container is None:
        return to_pcm16(samples)
    if container == "ADTS":
        encoder = StreamEncoder(fmt, sample_rate)
        return encoder.push(samples) + encoder.finish()
    buffer = io.BytesIO()
    if subtype == "PCM_16":  # the same 16-bit samples as the pcm format and streamed items
        samples = np.frombuffer(to_pcm16(samples), dtype="<i2")
    else:
        samples = np.asarray(samples, dtype=np.float32)
    sf.write(buffer, samples, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()
