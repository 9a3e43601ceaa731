import numpy as np
import pytest
import soundfile as sf

from higgs_tts.core.audio import SAMPLE_RATE, AudioError, read_audio, write_audio


def _tone(rate: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


@pytest.mark.parametrize(
    ("suffix", "fmt", "subtype"),
    [(".wav", "WAV", "PCM_16"), (".flac", "FLAC", "PCM_16"), (".ogg", "OGG", "VORBIS"), (".mp3", "MP3", None)],
)
@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (16000, 1), (24000, 1)])
def test_any_common_format_becomes_24k_mono(tmp_path, suffix, fmt, subtype, rate, channels):
    path = tmp_path / f"clip{suffix}"
    sf.write(path, _tone(rate, channels=channels), rate, format=fmt, subtype=subtype)
    audio = read_audio(path)
    assert audio.ndim == 1 and audio.dtype == np.float32
    # Codecs pad a little (MP3 frames); the duration must survive resampling.
    assert abs(len(audio) / SAMPLE_RATE - 0.5) < 0.06
    assert 0.2 < np.abs(audio).max() <= 1.0
    assert read_audio(path.read_bytes()).shape == audio.shape


def test_garbage_is_a_clear_error():
    with pytest.raises(AudioError, match="cannot decode audio"):
        read_audio(b"definitely not audio")


def test_write_wav_is_16_bit(tmp_path):
    path = tmp_path / "out.wav"
    write_audio(path, np.zeros(2400, dtype=np.float32))
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (24000, 1, "PCM_16", 2400)


def test_time_stretch_keeps_pitch_and_scales_duration():
    from higgs_tts.core.audio import time_stretch

    t = np.arange(24000) / 24000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for rate in (0.5, 1.5, 2.0):
        out = time_stretch(tone, rate)
        assert len(out) == round(24000 / rate)
        spectrum = np.abs(np.fft.rfft(out[2048:-2048]))
        peak_hz = np.argmax(spectrum) * 24000 / (len(out) - 4096)
        assert abs(peak_hz - 440) < 15
    assert time_stretch(tone, 1.0) is tone
