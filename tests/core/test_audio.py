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


BOMB_PROBE = """
import io, resource, sys
import numpy as np, soundfile as sf
from higgs_tts.core.audio import AudioError, read_audio

rate, channels, seconds, fmt = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
buffer = io.BytesIO()
t = np.arange(int(rate * seconds)) / rate
tone = 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
sf.write(buffer, np.stack([tone] * channels, axis=1) if channels > 1 else tone, rate, format=fmt)
data = buffer.getvalue()
del t, tone, buffer
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    audio = read_audio(data, max_seconds=60)
    outcome = f"decoded {len(audio)}"
except AudioError as exc:
    outcome = f"refused {exc}"
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(f"{outcome}|{grown:.0f}")
"""


@pytest.mark.slow  # a subprocess
@pytest.mark.parametrize(("rate", "channels", "seconds", "fmt", "expect"), [
    (24001, 1, 1.0, "WAV", "decoded"),  # a rate coprime with 24 kHz: once 40 s and +9.5 GB
    (47999, 1, 1.0, "WAV", "decoded"),
    (997, 1, 60.0, "WAV", "decoded"),  # a 117 KB file whose resampler bank was 24000 x 997 taps: +371 MB
    (47999, 1, 60.0, "WAV", "decoded"),
    (655_350, 8, 59.0, "FLAC", "refused"),  # 8 channels at 655 kHz: a small file, a huge decode
])
def test_resampler_and_decoded_size_bombs_stay_within_100_mb(rate, channels, seconds, fmt, expect):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", BOMB_PROBE, str(rate), str(channels), str(seconds), fmt],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    outcome, grown = done.stdout.strip().rsplit("|", 1)
    assert outcome.startswith(expect), outcome
    assert float(grown) < 100, f"peak memory grew by {grown} MB"


DECODE_PEAK = """
import io, sys
from pathlib import Path
import av, numpy as np, soundfile as sf  # libraries loaded first: what is measured is the decode
from higgs_tts.core.audio import read_audio

def status(field):
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields[field].split()[0]) / 1024

buffer = io.BytesIO()
sf.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * np.arange(997 * 60) / 997)).astype(np.float32), 997,
         format="WAV", subtype="PCM_16")  # 60 s, 117 KB
Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to VmRSS
before = status("VmRSS")
audio = read_audio(buffer.getvalue())
print(len(audio), status("VmHWM") - before)
"""


@pytest.mark.slow  # a subprocess
def test_an_odd_rate_decodes_in_a_few_times_its_own_size():
    """60 s at 997 Hz becomes 5.5 MB at 24 kHz; libswresample, fed the whole clip, held it several times over
    (+44 MB); fed in pieces written into the result, the decode peaks at a few times that (+11 MB)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", DECODE_PEAK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    samples, grown = done.stdout.split()
    assert int(samples) == 1440000 and float(grown) < 4 * 5.5, f"peak memory grew by {grown} MB"


@pytest.mark.parametrize("rate", [997, 24001, 47999])
def test_libswresample_in_pieces_is_libswresample_whole(rate):
    import av

    from higgs_tts.core.audio import _swr_resample

    samples = (np.random.default_rng(rate).standard_normal(5 * rate) * 0.3).astype(np.float32)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
    frame.sample_rate = rate
    whole = np.concatenate([f.to_ndarray()[0] for f in (*resampler.resample(frame), *resampler.resample(None))])
    pieces = _swr_resample(samples, rate)
    assert len(pieces) == -(-len(samples) * SAMPLE_RATE // rate) and len(whole) >= len(pieces)
    # the same filter over the same samples; at 24001 Hz its phase steps round a little otherwise in pieces
    np.testing.assert_allclose(pieces, whole[:len(pieces)], rtol=0, atol=1e-4 if rate == 24001 else 0)


@pytest.mark.parametrize("rate", [997, 11025, 24001, 47999])
def test_every_rate_keeps_its_pitch_and_length(rate):
    # rates whose resampler bank would be large go through libswresample: the same tone, as long
    from higgs_tts.core.audio import to_mono_24k

    out = to_mono_24k(_tone(rate, seconds=2.0).astype(np.float32), rate)
    assert len(out) == -(-2 * rate * SAMPLE_RATE // rate)
    spectrum = np.abs(np.fft.rfft(out[2400:-2400]))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / (len(out) - 4800) - 440) < 2
    assert 0.45 < np.abs(out[2400:-2400]).max() < 0.55


def test_an_undecodable_file_is_described_without_python_internals():
    with pytest.raises(AudioError) as err:
        read_audio(b"not audio at all" * 10)
    message = str(err.value)
    assert message.startswith("cannot decode audio: Format not recognised. (FFmpeg: Invalid data found"), message
    assert "BytesIO" not in message and "0x" not in message


@pytest.mark.parametrize("kind", ["m4a", "webm", "opus", "mp3"])
def test_phone_and_browser_recordings_decode(kind, voice_prompts):
    from conftest import encode_recording

    original = read_audio(voice_prompts / "belinda.wav")
    data = encode_recording(voice_prompts / "belinda.wav", kind, seconds=3.0)
    audio = read_audio(data, max_seconds=60)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert abs(len(audio) / SAMPLE_RATE - 3.0) < 0.1  # encoder padding at most
    # The same speech, not noise: the loudness envelope follows the original's.
    n = min(len(audio), 3 * SAMPLE_RATE) // 2400 * 2400
    envelope = lambda x: np.sqrt((x[:n].reshape(-1, 2400) ** 2).mean(axis=1))  # noqa: E731
    assert np.corrcoef(envelope(audio), envelope(original))[0, 1] > 0.8


def test_a_container_outside_the_list_is_refused_before_it_opens():
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as out:  # FFmpeg reads it; libsndfile does not
        stream = out.add_stream("mp2", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 48000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 48000
        for piece in (frame, None):
            for packet in stream.encode(piece):
                out.mux(packet)
    assert av.open(io.BytesIO(buffer.getvalue())).streams.audio  # a real, readable file
    with pytest.raises(AudioError, match="supported: WAV, FLAC, MP3, OGG/Opus, M4A/AAC or WebM"):
        read_audio(buffer.getvalue())


AV_BOMB_PROBE = """
import sys, time
from higgs_tts.core.audio import AudioError, read_audio

def peak_kb():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])

data = open(sys.argv[1], "rb").read()
open("/proc/self/clear_refs", "w").write("5")  # the peak restarts from the current size (Linux)
before = peak_kb()
started = time.perf_counter()
try:
    audio = read_audio(data, max_seconds=60)
    outcome = f"decoded {len(audio)}"
except AudioError as exc:
    outcome = f"refused {exc}"
seconds = time.perf_counter() - started
grown = (peak_kb() - before) / 1024
print(f"{outcome}|{seconds:.3f}|{grown:.0f}")
"""


@pytest.mark.slow  # a subprocess
@pytest.mark.parametrize("kind", ["webm", "m4a", "opus"])
def test_a_compressed_audio_bomb_is_refused_with_bounded_memory(kind, tmp_path):
    import subprocess
    import sys

    from conftest import audio_bomb

    bomb = tmp_path / f"bomb.{kind}"
    bomb.write_bytes(audio_bomb(kind, 3 * 3600))  # three hours of silence in a few MB
    assert bomb.stat().st_size < 10 * 2**20
    done = subprocess.run([sys.executable, "-c", AV_BOMB_PROBE, str(bomb)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    outcome, seconds, grown = done.stdout.strip().rsplit("|", 2)
    print(f"{kind} bomb ({bomb.stat().st_size} bytes): {outcome} in {seconds} s, peak RSS +{grown} MB")
    assert outcome.startswith("refused audio is"), outcome
    assert "limit" in outcome and "60 s" in outcome
    assert float(grown) < 100, f"peak memory grew by {grown} MB"
