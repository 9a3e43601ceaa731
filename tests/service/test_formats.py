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


class _NonSeekable(io.RawIOBase):
    """A response body as a streaming client reads it: forward only, in small reads."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        piece = self._data.read(min(len(buffer), 512))
        buffer[: len(piece)] = piece
        return len(piece)


def decoded_samples(data: bytes, fmt: str) -> int:
    """Samples PyAV decodes from `data`, read as a file and as a stream (the fewer of the two)."""
    import av

    if fmt == "pcm":
        return len(data) // 2
    counts = []
    for source in (io.BytesIO(data), _NonSeekable(data)):
        with av.open(source, format=formats.FORMATS[fmt].av_format or fmt) as container:
            counts.append(sum(frame.samples for frame in container.decode(audio=0)))
    return min(counts)


FRAME = 960  # samples of one codec frame: 40 ms at 24 kHz (25 frames a second)


@pytest.mark.parametrize("fmt", list(formats.FORMATS))
@pytest.mark.parametrize("frames", [1, 2, 3])
def test_a_clip_of_a_few_frames_decodes_in_every_format(fmt, frames):
    """1 to 3 codec frames (a one-word reply): every format decodes to samples, whole or streamed
    (in one push or frame by frame), so clients such as LiveKit's get audio frames."""
    clip = (0.1 * np.random.default_rng(frames).standard_normal(frames * FRAME)).astype(np.float32)
    whole = formats.encode(clip, 24000, fmt)
    at_once = formats.StreamEncoder(fmt, 24000)
    by_frame = formats.StreamEncoder(fmt, 24000)
    streamed = at_once.push(clip) + at_once.finish()
    framewise = b"".join(by_frame.push(piece) for piece in formats.pieces(clip, FRAME)) + by_frame.finish()
    for data in (whole, streamed, framewise):
        assert decoded_samples(data, fmt) >= len(clip) * (1 if fmt in ("wav", "flac", "pcm") else 0.5) > 0


@pytest.mark.parametrize("fmt", list(formats.FORMATS))
def test_a_one_word_reply_decodes_in_every_format(service, fmt):
    """A one-word reply ("Hi.") cut to 1 and 3 frames by max_new_tokens, on the tiny model: the whole file
    (SpeechService.render) and the streamed one (open_stream through a StreamEncoder) both decode."""
    from higgs_tts.service.schema import parse_input

    for max_new_tokens in (10, 12):  # 8 codebooks, delayed: the first frame is complete at token 10
        request = parse_input({"transcript": "Hi.", "output_format": fmt, "max_new_tokens": max_new_tokens,
                               "seed": 1})
        rendered = service.render(request)
        assert 1 <= rendered.result.num_frames <= 3
        assert decoded_samples(rendered.data, fmt) > 0
        encoder = formats.StreamEncoder(fmt, 24000)
        data = b""
        for item in service.open_stream(request):
            if isinstance(item, np.ndarray):
                data += encoder.push(item)
        data += encoder.finish()
        assert decoded_samples(data, fmt) > 0


def test_soundfile_reads_a_streamed_wav_but_not_a_streamed_flac(tone):
    """What the README says of streamed files: libsndfile takes a WAV's unknown sizes as "to the
    end of the file"; a streamed FLAC states no length, and libsndfile cannot read it whole."""
    def streamed(fmt: str) -> bytes:
        encoder = formats.StreamEncoder(fmt, 24000)
        return b"".join(encoder.push(piece) for piece in formats.pieces(tone, 4800)) + encoder.finish()

    samples, rate = sf.read(io.BytesIO(streamed("wav")), dtype="float32")
    assert rate == 24000 and len(samples) == len(tone) and np.abs(samples - tone).max() < 1e-4
    with pytest.raises((ValueError, RuntimeError, sf.LibsndfileError)):
        sf.read(io.BytesIO(streamed("flac")), dtype="float32")
