import json
from pathlib import Path

import pytest
import torch

from higgs_tts.core.checkpoint import load_processor
from higgs_tts.core.codes import STREAM_BOS, STREAM_EOS, delay_frames, generated_frames, undelay
from higgs_tts.engine.sampler import forced_codes


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


def test_generated_frames_of_a_clip_as_its_own_stream():
    """A clip's delayed form is a stream that ends normally: all its frames come back."""
    frames = torch.randint(0, 1024, (6, 8))
    delayed = delay_frames(frames)
    tail = torch.full((3, 8), STREAM_EOS)  # padding after the end, as a batch would produce
    assert torch.equal(generated_frames(torch.cat([delayed, tail])), frames)
    assert torch.equal(generated_frames(delayed[1:]), frames)  # without its BOS column


def test_generated_frames_of_a_truncated_stream_drop_the_last_frame_as_upstream():
    frames = torch.randint(0, 1024, (6, 8))
    delayed = delay_frames(frames)[:-4]  # cut before codebooks 4..7 finished
    # 11 columns with BOS hold the BOS frame and 3 complete frames; upstream drops the last one.
    assert torch.equal(generated_frames(delayed), frames[:2])


def test_generated_frames_of_nothing():
    assert generated_frames(torch.full((1, 8), STREAM_BOS)).shape == (0, 8)
    assert generated_frames(torch.zeros((0, 8), dtype=torch.long)).shape == (0, 8)


# -- against upstream's own code (tests/core/data/upstream_stream_ends.json, docs/upstream-fidelity.md) --

ENDS = json.loads((Path(__file__).parent / "data" / "upstream_stream_ends.json").read_text())["cases"]


def our_stream(wishes):
    """The columns our decode loops produce when the model's logits favour `wishes[t]` at step t + 1:
    the engine's own delay-pattern forcing, greedy, until the all-EOS column or the wishes run out."""
    codebooks, ending, ended_steps = torch.arange(8), torch.tensor([False]), torch.tensor([0])
    columns = []
    for step in range(len(wishes) + 1):
        logits = torch.full((1, 8, 1026), -10.0)
        if step:
            logits[0, torch.arange(8), torch.tensor(wishes[step - 1])] = 10.0
        ended_steps += ending.long()  # as the engine's step does, before it samples
        forced = forced_codes(torch.tensor([step]), ended_steps, codebooks)
        column = torch.where(forced >= 0, forced, logits.argmax(dim=-1))
        columns.append(column[0])
        ending |= (column == STREAM_EOS).any(dim=1)
        if bool((column == STREAM_EOS).all()):
            break
    return torch.stack(columns)


@pytest.mark.parametrize("name", sorted(ENDS))
def test_generated_frames_equal_upstreams(name):
    """Normal end, codebook 7 a step late, a stray EOS, no end: the frames upstream keeps."""
    case = ENDS[name]
    expected = torch.tensor(case["upstream_frames"], dtype=torch.long).reshape(-1, 8)
    assert torch.equal(generated_frames(our_stream(case["wishes"])), expected)
    assert torch.equal(generated_frames(torch.tensor(case["upstream_columns"])), expected)


def test_codebook_7_late_costs_our_loop_one_more_column_but_no_frame():
    late, normal = our_stream(ENDS["codebook_7_late"]["wishes"]), our_stream(ENDS["normal_end"]["wishes"])
    assert late.shape[0] == normal.shape[0] + 1
    assert generated_frames(late).shape == generated_frames(normal).shape
