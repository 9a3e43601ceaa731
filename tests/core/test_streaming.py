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
    streamer = StreamingDecoder(decode, first_chunk=8, chunk=40, context=32)
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
    streamer = StreamingDecoder(decode, first_chunk=4, chunk=20, context=10)
    frames = torch.randint(0, 1024, (100, 8))
    assert streamer.push(frames[:13]) == []  # 4 + 10 frames of right context needed
    first = streamer.push(frames[13:14])
    assert [len(c) for c in first] == [4 * 960]
    later = streamer.push(frames[14:64])
    assert [len(c) for c in later] == [20 * 960, 20 * 960]


def test_settings_are_checked(decode):
    with pytest.raises(ValueError):
        StreamingDecoder(decode, first_chunk=0)
