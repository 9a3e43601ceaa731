import numpy as np
import pytest
import torch

from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.core.streaming import StreamingDecoder
from higgs_tts.synthesis.synthesizer import Synthesizer

TOLERANCE = 1e-4  # stated tolerance: max absolute sample difference (samples are in [-1, 1])


@pytest.fixture(scope="module")
def decode(settings):
    return Synthesizer(settings, ModelCache()).decode


@pytest.mark.parametrize("arrivals", [[1] * 137, [16] * 9, [137], [5, 50, 3, 79]])
def test_streamed_chunks_equal_one_decode(decode, arrivals):
    frames = torch.randint(0, 1024, (sum(arrivals), 8), generator=torch.Generator().manual_seed(3))
    streamer = StreamingDecoder(decode, first_chunk=8, chunk=40, context=32, first_context=32)
    chunks, start = [], 0
    for n in arrivals:
        chunks += streamer.push(frames[start : start + n])
        start += n
    chunks.append(streamer.finish())
    streamed = np.concatenate(chunks)
    whole = decode(frames)
    assert len(streamed) == len(whole) == frames.shape[0] * 960
    assert np.abs(streamed - whole).max() < TOLERANCE


def test_first_chunk_is_small_and_comes_early(decode):
    streamer = StreamingDecoder(decode, first_chunk=4, chunk=20, context=10, first_context=10)
    frames = torch.randint(0, 1024, (100, 8))
    assert streamer.push(frames[:13]) == []  # 4 + 10 frames of right context needed
    first = streamer.push(frames[13:14])
    assert [len(c) for c in first] == [4 * 960]
    later = streamer.push(frames[14:64])  # then 8, 16, 20, ... each with its 10 frames of context
    assert [len(c) for c in later] == [8 * 960, 16 * 960, 20 * 960]


def test_default_first_audio_after_sixteen_frames_and_the_whole_still_equals_one_decode(decode):
    """The servers' decoder: 8 frames with 8 on their right, then chunks growing to 40 with 32 of
    context. The tiny codec reaches about 4 frames to the right, so every sample is exact here."""
    frames = torch.randint(0, 1024, (150, 8), generator=torch.Generator().manual_seed(5))
    streamer = StreamingDecoder(decode)
    assert streamer.push(frames[:15]) == []
    first = streamer.push(frames[15:16])
    assert [len(c) for c in first] == [8 * 960]  # first audio after 16 frames
    chunks = first + streamer.push(frames[16:]) + [streamer.finish()]
    sizes = [len(c) // 960 for c in chunks]
    assert sizes[:4] == [8, 16, 32, 40] and sum(sizes) == 150
    assert np.abs(np.concatenate(chunks) - decode(frames)).max() < TOLERANCE


@pytest.mark.parametrize("before_pause", [5, 13, 16, 57])
def test_after_a_pause_the_ramp_starts_again_and_the_whole_still_equals_one_decode(decode, before_pause):
    """A live session settles its decoder (finish) whenever no phrase waits. A first phrase shorter
    than the first piece once left the ramp at 0 frames: the next push looped forever. The audio
    before a pause is decoded without what comes after it, so only the frames near the pause may
    differ from one decode of the whole (the tiny codec reaches about 4 frames)."""
    frames = torch.randint(0, 1024, (120, 8), generator=torch.Generator().manual_seed(6))
    streamer = StreamingDecoder(decode)
    chunks = streamer.push(frames[:before_pause]) + [streamer.finish()]
    after = streamer.push(frames[before_pause:])
    assert [len(c) // 960 for c in after][:2] == [8, 16]  # first audio early again
    chunks += after + [streamer.finish()]
    assert sum(len(c) for c in chunks) == 120 * 960
    difference = np.abs(np.concatenate(chunks) - decode(frames))
    near = slice(max(0, before_pause - 8) * 960, (before_pause + 8) * 960)
    assert difference[near].max() > 0  # the settled pause is not what the whole would decode to
    difference[near] = 0
    assert difference.max() < TOLERANCE


def test_settings_are_checked(decode):
    with pytest.raises(ValueError):
        StreamingDecoder(decode, first_chunk=0)
