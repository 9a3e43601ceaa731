import io

import numpy as np
import pytest
import soundfile as sf

from higgs_tts.service import formats


@pytest.fixture
def tone():
    t = np.arange(24000) / 24000
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_container_formats_decode_back(tone, fmt):
    data = formats.encode(tone, 24000, fmt)
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 24000
    assert abs(len(decoded) - len(tone)) < 2400
    assert formats.content_type(fmt).startswith("audio/")


def test_aac_decodes_back(tone):
    import av

    data = formats.encode(tone, 24000, "aac")
    assert data[:2] == b"\xff\xf1"  # ADTS sync word
    with av.open(io.BytesIO(data)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
        assert container.streams.audio[0].codec_context.sample_rate == 24000
    assert abs(samples - len(tone)) < 4096


def test_wav_is_lossless_16_bit(tone):
    decoded, _ = sf.read(io.BytesIO(formats.encode(tone, 24000, "wav")), dtype="float32")
    assert np.abs(decoded - tone).max() < 1e-4


def test_pcm_is_raw_s16le(tone):
    data = formats.encode(tone, 24000, "pcm")
    assert len(data) == 2 * len(tone)
    samples = np.frombuffer(data, dtype="<i2")
    assert np.abs(samples / 32767.0 - tone).max() < 1e-4


def test_unknown_format():
    with pytest.raises(ValueError, match="output_format"):
        formats.encode(np.zeros(10, dtype=np.float32), 24000, "aiff")


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_stream_encoder_sends_bytes_while_pushed_and_decodes_to_the_whole_clip(tone, fmt):
    import av

    encoder = formats.StreamEncoder(fmt, 24000)
    pushed = [encoder.push(tone[i : i + 2400]) for i in range(0, len(tone), 2400)]  # ten pushes of 0.1 s
    data = b"".join(pushed) + encoder.finish()
    assert sum(1 for p in pushed[:5] if p) >= 3  # bytes leave during the first half, not only at the end
    if fmt == "pcm":
        assert data == formats.encode(tone, 24000, "pcm")
        return
    with av.open(io.BytesIO(data)) as container:
        rate = container.streams.audio[0].rate
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    expected = len(tone) * rate // 24000
    assert expected <= len(decoded) <= expected + 4096 * rate // 24000  # codec priming and padding at most
    if fmt in ("wav", "flac"):  # lossless: the same samples
        assert np.abs(decoded.astype(np.float32) / 32768.0 - tone).max() < 1e-4


def test_stream_encoder_refuses_an_unknown_format():
    with pytest.raises(ValueError, match="output_format"):
        formats.StreamEncoder("aiff", 24000)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_an_empty_clip_is_a_file_players_open(fmt):
    # the model may end a stream at once; mp3 and aac encoders alone write no byte for no samples
    import av

    empty = np.zeros(0, dtype=np.float32)
    encoder = formats.StreamEncoder(fmt, 24000)
    for data in (formats.encode(empty, 24000, fmt), encoder.push(empty) + encoder.finish()):
        assert data
        if fmt == "pcm":
            assert len(data) == 2 * round(formats.EMPTY_CLIP_SECONDS * 24000)
            continue
        with av.open(io.BytesIO(data)) as container:
            assert sum(frame.samples for frame in container.decode(audio=0)) > 0  # a short silence
