"""Reading reference audio of any common format and writing results."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SAMPLE_RATE = 24000


class AudioError(ValueError):
    """Audio that cannot be read or is unusable as a reference."""


class AudioTooLong(AudioError):
    """Audio longer than the caller allows."""


def to_mono_24k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mix to mono and resample to 24 kHz; returns float32 in [-1, 1]."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    samples = np.asarray(samples, dtype=np.float32)
    if sample_rate != SAMPLE_RATE:
        import torchaudio.functional as F

        samples = F.resample(torch.from_numpy(samples), sample_rate, SAMPLE_RATE).numpy()
    return np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)


def read_audio(source: str | Path | bytes, max_seconds: float | None = None) -> np.ndarray:
    """Decode WAV/FLAC/OGG/MP3 (anything libsndfile reads) from a path or bytes to 24 kHz mono.

    With `max_seconds`, longer audio is refused from its header, before anything is decoded.
    """
    handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        if max_seconds is not None:
            info = sf.info(handle)
            if info.samplerate and info.frames / info.samplerate > max_seconds:
                raise AudioTooLong(
                    f"audio is {info.frames / info.samplerate:.1f} s long; the limit is {max_seconds:g} s"
                )
            if isinstance(handle, io.BytesIO):
                handle.seek(0)
        samples, sample_rate = sf.read(handle, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"cannot decode audio: {exc}") from exc
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
