"""Reading reference audio of any common format and writing results."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SAMPLE_RATE = 24000
# Bounds on what a reference may cost, checked from the header before decoding: the source rate,
# and the decoded size (60 s of 192 kHz stereo fits; an 8-channel 655 kHz "bomb" does not).
MAX_SOURCE_RATE = 384_000
MAX_DECODED_BYTES = 128 * 2**20
# A rate whose ratio to 24 kHz reduces to more than this many input samples (24001 Hz: 24001) would
# make the resampler's kernel grow with the product of the two rates; such rates are rounded first.
MAX_RATIO_TERM = 1000


class AudioError(ValueError):
    """Audio that cannot be read or is unusable as a reference."""


class AudioTooLong(AudioError):
    """Audio longer than the caller allows."""


def resampling_rate(sample_rate: int) -> int:
    """The rate to resample from: the rate itself when its ratio to 24 kHz is small, else the
    nearest multiple of 100 Hz (24001 Hz plays 0.004% fast; the resampler's cost stays bounded)."""
    if sample_rate // math.gcd(sample_rate, SAMPLE_RATE) <= MAX_RATIO_TERM:
        return sample_rate
    return max(100, round(sample_rate / 100) * 100)


def to_mono_24k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mix to mono and resample to 24 kHz; returns float32 in [-1, 1]."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    samples = np.asarray(samples, dtype=np.float32)
    source_rate = resampling_rate(sample_rate)
    if source_rate != SAMPLE_RATE:
        import torchaudio.functional as F

        samples = F.resample(torch.from_numpy(samples), source_rate, SAMPLE_RATE).numpy()
    return np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)


def read_audio(source: str | Path | bytes, max_seconds: float | None = None) -> np.ndarray:
    """Decode WAV/FLAC/OGG/MP3 (anything libsndfile reads) from a path or bytes to 24 kHz mono.

    Longer audio than `max_seconds`, rates above MAX_SOURCE_RATE and audio that decodes to more
    than MAX_DECODED_BYTES are refused from the header, before anything is decoded.
    """
    handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        info = sf.info(handle)
        if max_seconds is not None and info.samplerate and info.frames / info.samplerate > max_seconds:
            raise AudioTooLong(f"audio is {info.frames / info.samplerate:.1f} s long; the limit is {max_seconds:g} s")
        if info.samplerate > MAX_SOURCE_RATE:
            raise AudioError(f"sample rate {info.samplerate} Hz is above the limit of {MAX_SOURCE_RATE} Hz")
        decoded = info.frames * info.channels * 4
        if decoded > MAX_DECODED_BYTES:
            raise AudioError(f"audio decodes to {decoded / 2**20:.0f} MiB ({info.channels} channels at "
                             f"{info.samplerate} Hz); the limit is {MAX_DECODED_BYTES // 2**20} MiB")
        if isinstance(handle, io.BytesIO):
            handle.seek(0)
        samples, sample_rate = sf.read(handle, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        # libsndfile's own words, without the Python object it was handed ("<_io.BytesIO object at 0x...>")
        detail = getattr(exc, "error_string", None) or str(exc)
        raise AudioError(f"cannot decode audio: {detail}") from exc
    if samples.size == 0:
        raise AudioError("audio is empty")
    return to_mono_24k(samples, sample_rate)


def duration_seconds(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    return len(samples) / float(sample_rate)


def write_audio(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float samples; the format follows the file suffix (.wav is 16-bit PCM)."""
    path = Path(path)
    subtype = "PCM_16" if path.suffix.lower() == ".wav" else None
    sf.write(path, samples, sample_rate, subtype=subtype)


def time_stretch(samples: np.ndarray, rate: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play `rate` times faster (2.0 = half the duration) without changing the pitch (phase vocoder)."""
    if rate == 1.0 or len(samples) == 0:
        return samples
    import torchaudio.functional as F

    n_fft, hop = 1024, 256
    signal = torch.from_numpy(np.asarray(samples, dtype=np.float32))
    window = torch.hann_window(n_fft)
    spectrum = torch.stft(signal, n_fft, hop, window=window, return_complex=True)
    advance = torch.linspace(0, np.pi * hop, spectrum.shape[0])[:, None]
    stretched = F.phase_vocoder(spectrum, rate, advance)
    length = int(round(len(samples) / rate))
    out = torch.istft(stretched, n_fft, hop, window=window, length=length)
    return np.clip(out.numpy(), -1.0, 1.0).astype(np.float32)
