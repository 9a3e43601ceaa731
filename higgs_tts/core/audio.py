"""Reading reference audio of any common format and writing results."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SAMPLE_RATE = 24000
FRAMES_PER_SECOND = 25  # codec frames a second of audio (hop 960 at 24 kHz)
# Bounds on what a reference may cost, checked from the header before decoding: the source rate,
# and the decoded size (60 s of 192 kHz stereo fits; an 8-channel 655 kHz "bomb" does not).
MAX_SOURCE_RATE = 384_000
MAX_DECODED_BYTES = 128 * 2**20
# torchaudio's resampler builds a filter bank of (24000 / g) x (rate / g) taps, g = gcd(rate, 24000):
# tiny for the common rates (44.1 kHz: 80 x 147) but 24000 x 997 for 997 Hz (+400 MB). Rates whose
# bank is above this many taps go through libswresample (PyAV) instead, whose filter is a fixed size.
MAX_RESAMPLER_TAPS = 2**16


class AudioError(ValueError):
    """Audio that cannot be read or is unusable as a reference."""


class AudioTooLong(AudioError):
    """Audio longer than the caller allows."""


def _resampler_taps(sample_rate: int) -> int:
    g = math.gcd(sample_rate, SAMPLE_RATE)
    return (sample_rate // g) * (SAMPLE_RATE // g)


def to_mono_24k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mix to mono (a 2-D array: frames x channels) and resample to 24 kHz; float32 in [-1, 1].
    Memory stays a fixed factor of the audio's length at every rate (see MAX_RESAMPLER_TAPS)."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    samples = np.asarray(samples, dtype=np.float32)
    if sample_rate != SAMPLE_RATE and _resampler_taps(sample_rate) <= MAX_RESAMPLER_TAPS:
        import torchaudio.functional as F

        samples = F.resample(torch.from_numpy(samples), sample_rate, SAMPLE_RATE).numpy()
    elif sample_rate != SAMPLE_RATE:
        samples = _swr_resample(samples, sample_rate)
    return np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)


def _swr_resample(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at any rate to 24 kHz through libswresample (a fixed-size polyphase filter),
    as long as torchaudio's would be: ceil(len * 24000 / rate) samples. Fed in pieces of about
    BLOCK_FRAMES output samples, each written into the result as it comes: the resampler's own
    buffers stay that size however long the clip (whole, they held it several times over)."""
    import av

    length = -(-len(samples) * SAMPLE_RATE // sample_rate)
    resampled, filled = np.zeros(length, np.float32), 0
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    step = max(1, BLOCK_FRAMES * sample_rate // SAMPLE_RATE)  # input samples per piece
    for start in [*range(0, len(samples), step), None]:  # None: flush what the filter still holds
        frame = None
        if start is not None:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, start:start + step]),
                                               format="flt", layout="mono")
            frame.sample_rate = sample_rate
        for out in resampler.resample(frame):
            piece = out.to_ndarray()[0][:length - filled]
            resampled[filled:filled + len(piece)] = piece
            filled += len(piece)
    return resampled


# The containers a reference may come in, as FFmpeg's demuxers name them; any other (playlists,
# concat lists, image sequences) is refused before it opens: some make FFmpeg read other files or URLs.
AV_DEMUXERS = "wav,w64,flac,mp3,ogg,mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,aac,aiff"
FORMATS_NAMED = "WAV, FLAC, MP3, OGG/Opus, M4A/AAC or WebM"
BLOCK_FRAMES = 65536  # libsndfile reads this many frames at a time


class _Budget:
    """What a decode may still produce: the caller's seconds and MAX_DECODED_BYTES, counted as
    frames arrive, so that a small file that decodes to hours stops at the limit."""

    def __init__(self, max_seconds: float | None) -> None:
        self.max_seconds = max_seconds
        self.frames = 0
        self.decoded = 0

    def start(self, sample_rate: int, channels: int, frames: int | None = None) -> None:
        """Checks from the header: the rate, and the length or size where the header knows it."""
        if sample_rate <= 0 or channels <= 0:
            raise AudioError(f"audio has {channels} channels at {sample_rate} Hz")
        if sample_rate > MAX_SOURCE_RATE:
            raise AudioError(f"sample rate {sample_rate} Hz is above the limit of {MAX_SOURCE_RATE} Hz")
        if frames:
            if self.max_seconds is not None and frames / sample_rate > self.max_seconds:
                raise AudioTooLong(f"audio is {frames / sample_rate:.1f} s long; the limit is {self.max_seconds:g} s")
            if frames * channels * 4 > MAX_DECODED_BYTES:
                raise AudioError(f"audio decodes to {frames * channels * 4 / 2**20:.0f} MiB ({channels} channels at "
                                 f"{sample_rate} Hz); the limit is {MAX_DECODED_BYTES // 2**20} MiB")

    def take(self, frames: int, channels: int, sample_rate: int) -> None:
        """Count decoded frames; refuses the moment the total passes a limit."""
        self.frames += frames
        self.decoded += frames * channels * 4
        if self.max_seconds is not None and self.frames / sample_rate > self.max_seconds:
            raise AudioTooLong(f"audio is longer than the limit of {self.max_seconds:g} s")
        if self.decoded > MAX_DECODED_BYTES:
            raise AudioError(f"audio decodes to more than {MAX_DECODED_BYTES // 2**20} MiB "
                             f"({channels} channels at {sample_rate} Hz)")


class _NotSoundfile(Exception):
    """libsndfile cannot open it (m4a, webm, opus in some builds): PyAV gets a try."""


def _read_soundfile(source, budget: _Budget) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate, read block by block (libsndfile: WAV, FLAC, OGG, MP3)."""
    handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        sound = sf.SoundFile(handle)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        # libsndfile's own words, without the Python object it was handed ("<_io.BytesIO object at 0x...>")
        raise _NotSoundfile(getattr(exc, "error_string", None) or str(exc)) from None
    with sound:
        rate, channels = sound.samplerate, sound.channels
        budget.start(rate, channels, sound.frames if sound.frames < 2**62 else None)
        blocks = []
        try:
            for block in sound.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True):
                budget.take(len(block), channels, rate)
                blocks.append(block.mean(axis=1) if channels > 1 else block[:, 0].copy())
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"cannot decode audio: {getattr(exc, 'error_string', None) or exc}") from None
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), rate


def _read_av(source, budget: _Budget, soundfile_said: str) -> tuple[np.ndarray, int]:
    """The same through FFmpeg (PyAV): M4A/AAC, WebM, Opus and the rest of AV_DEMUXERS; frames
    are counted as they are decoded and each is mixed to mono at once."""
    import av

    handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else str(source)
    try:
        container = av.open(handle, options={"format_whitelist": AV_DEMUXERS})
    except av.FFmpegError as exc:
        raise AudioError(f"cannot decode audio: {soundfile_said} (FFmpeg: {exc.strerror or 'unreadable'}); "
                         f"supported: {FORMATS_NAMED}") from None
    with container:
        if not container.streams.audio:
            raise AudioError(f"cannot decode audio: the {container.format.name} file has no audio stream")
        stream = container.streams.audio[0]
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
        seconds = container.duration / av.time_base if container.duration and container.duration > 0 else None
        budget.start(rate, channels, int(seconds * rate) if seconds and rate else None)
        resampler = av.AudioResampler(format="fltp", rate=rate)  # float planes at one rate, any input
        pieces = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    planes = out.to_ndarray()
                    budget.take(planes.shape[1], planes.shape[0], rate)
                    pieces.append(planes.mean(axis=0) if planes.shape[0] > 1 else planes[0])
            for out in resampler.resample(None):
                planes = out.to_ndarray()
                budget.take(planes.shape[1], planes.shape[0], rate)
                pieces.append(planes.mean(axis=0) if planes.shape[0] > 1 else planes[0])
        except AudioError:
            raise
        except (av.FFmpegError, ValueError) as exc:  # a corrupt packet; a stream that changes its layout
            raise AudioError(f"cannot decode audio: {getattr(exc, 'strerror', None) or exc}") from None
    return (np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)), rate


def read_audio(source: str | Path | bytes, max_seconds: float | None = None) -> np.ndarray:
    """Decode a recording (WAV, FLAC, MP3, OGG/Opus, M4A/AAC, WebM) from a path or bytes to 24 kHz mono.

    libsndfile reads what it can, PyAV (FFmpeg) the rest. Rates above MAX_SOURCE_RATE are refused
    from the header; audio longer than `max_seconds` or decoding to more than MAX_DECODED_BYTES is
    refused from the header where it tells, else while decoding, the moment it passes the limit.
    """
    budget = _Budget(max_seconds)
    try:
        samples, sample_rate = _read_soundfile(source, budget)
    except _NotSoundfile as exc:
        samples, sample_rate = _read_av(source, budget, str(exc))
    if samples.size == 0:
        raise AudioError("audio is empty")
    return to_mono_24k(samples, sample_rate)


def duration_seconds(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    return len(samples) / float(sample_rate)


def wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit PCM WAV file in memory (written to disk by Python's own I/O, a full disk is an
    OSError with its errno, not a libsndfile error)."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_audio(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float samples; the format follows the file suffix (.wav is 16-bit PCM)."""
    path = Path(path)
    subtype = "PCM_16" if path.suffix.lower() == ".wav" else None
    sf.write(path, samples, sample_rate, subtype=subtype)


MIN_SPEED, MAX_SPEED = 0.25, 4.0  # the playback speeds a request may ask time_stretch for


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
