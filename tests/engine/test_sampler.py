import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from higgs_tts.core.codes import STREAM_BOS, STREAM_EOS
from higgs_tts.core.sampling import SamplingParams
from higgs_tts.engine.sampler import SamplingTensors, draw, forced_codes, gumbel_noise, sample, warp

CPU = torch.device("cpu")
RANKS = torch.arange(1026)


def tensors(params: list[SamplingParams], seeds: list[int] | None = None) -> SamplingTensors:
    s = SamplingTensors.empty(len(params), CPU)
    for row, p in enumerate(params):
        s.write_row(row, p, (seeds or [0] * len(params))[row], 1026)
    return s


def cells(k: int, v: int) -> torch.Tensor:
    return torch.arange(k * v).view(1, k, v)


def test_warp_matches_transformers_per_row():
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 1026)
    params = [SamplingParams(temperature=0.7, top_k=20, top_p=0.9), SamplingParams(temperature=1.3, top_k=0, top_p=1.0),
              SamplingParams(temperature=1.0, top_k=5, top_p=0.5)]
    scores, order = warp(logits, tensors(params), RANKS)
    ours = torch.empty_like(scores).scatter_(-1, order, scores)  # back from rank order to code order
    for row, p in enumerate(params):
        expected = TemperatureLogitsWarper(p.temperature)(None, logits[row].clone())
        if p.top_k:
            expected = TopKLogitsWarper(p.top_k)(None, expected)
        if p.top_p < 1.0:
            expected = TopPLogitsWarper(p.top_p)(None, expected)
        assert torch.equal(torch.isinf(ours[row]), torch.isinf(expected))
        finite = torch.isfinite(expected)
        assert torch.allclose(ours[row][finite], expected[finite])
    assert torch.isfinite(ours[1]).all()  # top_k 0 and top_p 1 filter nothing


def test_noise_is_a_pure_function_of_seed_and_step():
    seeds = torch.tensor([1, 2, 1])
    steps = torch.tensor([5, 5, 5])
    noise = gumbel_noise(seeds, steps, cells(8, 1026))
    assert noise.shape == (2, 3, 8, 1026) and noise.dtype == torch.float32
    assert torch.equal(noise[:, 0], noise[:, 2]) and not torch.equal(noise[:, 0], noise[:, 1])
    assert not torch.equal(noise, gumbel_noise(seeds, steps + 1, cells(8, 1026)))
    assert not torch.equal(noise[0], noise[1])  # the draw and the RAS redraw use different noise
    for draw_noise in noise:  # Gumbel(0, 1): mean Euler-Mascheroni, variance pi^2 / 6
        assert abs(draw_noise.mean().item() - 0.5772) < 0.02
        assert abs(draw_noise.var().item() - 1.6449) < 0.05
    assert abs(torch.corrcoef(noise.view(2, -1))[0, 1].item()) < 0.01  # the two halves are independent


def test_gumbel_max_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log().view(1, 1, 3).expand(4000, 1, 3)
    noise = gumbel_noise(torch.arange(4000), torch.zeros(4000, dtype=torch.long), cells(1, 3))
    for draw_noise in noise:
        freq = torch.bincount((logits + draw_noise).argmax(-1).flatten(), minlength=3) / 4000
        assert torch.allclose(freq, probs, atol=0.03)


def test_draws_respect_top_k():
    torch.manual_seed(1)
    logits = torch.randn(64, 8, 1026)
    s = tensors([SamplingParams(temperature=1.0, top_k=3, top_p=1.0)] * 64, list(range(64)))
    codes = draw(logits, s, gumbel_noise(s.seeds, torch.zeros(64, dtype=torch.long), cells(8, 1026))[0], RANKS)
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == codes[..., None]).any(-1).all()
    assert len(codes.unique()) > 3  # and they are draws, not the argmax


def test_delay_pattern_forcing():
    codebooks = torch.arange(8)
    forced = forced_codes(torch.tensor([0, 3, 9]), torch.tensor([0, 0, 1]), codebooks)
    assert (forced[0] == STREAM_BOS).all()  # first column all BOS
    assert (forced[1, :3] == -1).all() and (forced[1, 3:] == STREAM_BOS).all()  # codebook k: BOS for k + 1 steps
    assert forced[2, 0] == STREAM_EOS and (forced[2, 1:] == -1).all()  # one step after an EOS
    assert (forced_codes(torch.tensor([20]), torch.tensor([8]), codebooks) == STREAM_EOS).all()


def test_sample_forces_the_pattern_and_redraws_repeats():
    torch.manual_seed(2)
    logits = torch.randn(2, 8, 1026)
    greedy = SamplingParams(temperature=0.0, ras_win_len=4, ras_win_max_num_repeat=2)
    s = tensors([greedy, greedy])
    noise = gumbel_noise(s.seeds, torch.tensor([9, 9]), cells(8, 1026))
    best = logits.argmax(-1)
    history = torch.full((2, 4, 8), -1)
    history[1, 2:] = best[1]  # row 1 saw its greedy codes twice in its window
    recent = torch.ones(2, 4, dtype=torch.bool)
    forced = torch.full((2, 8), -1)
    forced[0, 5:] = STREAM_BOS
    column = sample(logits, forced, s, noise, history, recent, RANKS)
    assert torch.equal(column[0, :5], best[0, :5]) and (column[0, 5:] == STREAM_BOS).all()
    assert torch.equal(column[1], (logits[1] + noise[1, 1]).argmax(-1))  # redrawn from the raw distribution
    recent[1] = False  # outside the window nothing counts
    assert torch.equal(sample(logits, torch.full((2, 8), -1), s, noise, history, recent, RANKS)[1], best[1])


def test_tiny_temperatures_decode_greedily_without_overflow():
    for tiny in (1e-45, 1e-300, 5e-324, 0.0):
        params = SamplingParams(temperature=tiny)
        assert params.greedy
        s = tensors([params])
        assert bool(s.greedy[0]) and float(s.temperature[0]) == 1.0
    assert not SamplingParams(temperature=0.001).greedy
