import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from higgs_tts.core.sampling import SamplingParams
from higgs_tts.engine.sampler import DelayPattern, SamplingTensors, gumbel_noise, warp


def test_warp_matches_transformers_per_row():
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 1026)
    params = [SamplingParams(temperature=0.7, top_k=20, top_p=0.9), SamplingParams(temperature=1.3, top_k=0, top_p=1.0),
              SamplingParams(temperature=1.0, top_k=5, top_p=0.5)]
    ours = warp(logits, SamplingTensors.build(params, [0, 0, 0], 1026, torch.device("cpu")))
    for row, p in enumerate(params):
        expected = TemperatureLogitsWarper(p.temperature)(None, logits[row].clone())
        if p.top_k:
            expected = TopKLogitsWarper(p.top_k)(None, expected)
        if p.top_p < 1.0:
            expected = TopPLogitsWarper(p.top_p)(None, expected)
        assert torch.equal(torch.isinf(ours[row]), torch.isinf(expected))
        finite = torch.isfinite(expected)
        assert torch.allclose(ours[row][finite], expected[finite])


def test_noise_is_a_pure_function_of_seed_and_step():
    seeds = torch.tensor([1, 2, 1])
    steps = torch.tensor([5, 5, 5])
    noise = gumbel_noise(seeds, steps, 0, 8, 1026)
    assert torch.equal(noise[0], noise[2]) and not torch.equal(noise[0], noise[1])
    assert not torch.equal(noise, gumbel_noise(seeds, steps + 1, 0, 8, 1026))
    assert not torch.equal(noise, gumbel_noise(seeds, steps, 1, 8, 1026))
    # Gumbel(0, 1): mean is the Euler-Mascheroni constant, variance pi^2 / 6.
    assert abs(noise.mean().item() - 0.5772) < 0.02
    assert abs(noise.var().item() - 1.6449) < 0.05


def test_gumbel_max_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log().view(1, 1, 3).expand(4000, 1, 3)
    draws = (logits + gumbel_noise(torch.arange(4000), torch.zeros(4000, dtype=torch.long), 0, 1, 3)).argmax(-1)
    freq = torch.bincount(draws.flatten(), minlength=3) / 4000
    assert torch.allclose(freq, probs, atol=0.03)


def test_delay_pattern_forcing():
    pattern = DelayPattern(1, 8, torch.device("cpu"))
    zeros = torch.zeros(1, 8, 1026)
    masked = pattern.apply(zeros, torch.tensor([0]))
    assert (masked.argmax(-1) == 1024).all()  # first column all BOS
    masked = pattern.apply(zeros, torch.tensor([3]))
    assert torch.isinf(masked[0, 3:, :1024]).all() and torch.isfinite(masked[0, :3]).all()
    column = torch.tensor([[5, 1025, 7, 7, 7, 7, 7, 7]])
    assert not pattern.observe(column).any()
    masked = pattern.apply(zeros, torch.tensor([9]))
    assert torch.isinf(masked[0, 0, :1025]).all() and torch.isfinite(masked[0, 1]).all()
    assert pattern.observe(torch.full((1, 8), 1025)).all()


def test_tiny_temperatures_decode_greedily_without_overflow():
    from higgs_tts.engine.sampler import SamplingTensors

    for tiny in (1e-45, 1e-300, 5e-324, 0.0):
        params = SamplingParams(temperature=tiny)
        assert params.greedy
        tensors = SamplingTensors.build([params], [1], 1026, torch.device("cpu"))
        assert bool(tensors.greedy[0]) and float(tensors.temperature[0]) == 1.0
    assert not SamplingParams(temperature=0.001).greedy
