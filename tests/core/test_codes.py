import torch

from higgs_tts.core.checkpoint import load_processor
from higgs_tts.core.codes import STREAM_BOS, STREAM_EOS, delay_frames, generated_frames, undelay


def test_delay_pattern_shape_and_corners():
    frames = torch.arange(5 * 8).reshape(5, 8) % 1024
    delayed = delay_frames(frames)
    assert delayed.shape == (5 + 2 + 7, 8)
    assert (delayed[0] == STREAM_BOS).all()
    assert (delayed[-1] == STREAM_EOS).all()
    for k in range(8):
        assert (delayed[:k + 1, k] == STREAM_BOS).all()
        assert torch.equal(delayed[k + 1 : k + 6, k], frames[:, k])
        assert (delayed[k + 6 :, k] == STREAM_EOS).all()


def test_delay_matches_the_native_processor(settings):
    processor = load_processor(settings)
    frames = torch.randint(0, 1024, (11, 8))
    wrapped = torch.cat([torch.full((1, 8), STREAM_BOS), frames, torch.full((1, 8), STREAM_EOS)])
    native = processor.build_delay_pattern(wrapped.T[None])[0].T
    assert torch.equal(delay_frames(frames), native)
    assert torch.equal(undelay(native[1:-1]), frames)


def test_generated_frames_stop_at_eos_column():
    frames = torch.randint(0, 1024, (6, 8))
    delayed = delay_frames(frames)
    tail = torch.full((3, 8), STREAM_EOS)  # padding after the end, as a batch would produce
    assert torch.equal(generated_frames(torch.cat([delayed, tail])), frames)


def test_generated_frames_of_a_truncated_stream_keep_complete_frames():
    frames = torch.randint(0, 1024, (6, 8))
    delayed = delay_frames(frames)[:-4]  # cut before codebooks 4..7 finished
    # 10 columns after BOS hold 3 frames whose 8 codebooks are all known.
    assert torch.equal(generated_frames(delayed), frames[:3])


def test_generated_frames_of_nothing():
    assert generated_frames(torch.full((1, 8), STREAM_BOS)).shape == (0, 8)
