"""The generate() path's stop event: set, generate() ends at its next step with the columns so far."""

import threading

import torch

from higgs_tts.core.checkpoint import load_model
from higgs_tts.core.generate import transformers_generate
from higgs_tts.core.prompt import PromptRenderer, build_prompt
from higgs_tts.core.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, ras_win_len=0, max_new_tokens=64)


def test_a_set_stop_ends_generation_at_its_first_step(settings):
    loaded = load_model(settings)
    inputs = PromptRenderer(loaded.processor).inputs(
        build_prompt("Hello there.", transcript="Hello there.", voices=[], scene="A quiet room."))
    whole = transformers_generate(loaded.model, inputs, GREEDY, seed=0, stop=threading.Event())
    stop = threading.Event()
    stop.set()
    stopped = transformers_generate(loaded.model, inputs, GREEDY, seed=0, stop=stop)
    assert whole.shape[0] > 9 and stopped.shape[0] <= 1  # one step, not the chunk
    assert torch.equal(stopped, whole[: stopped.shape[0]])  # the same columns, only fewer
