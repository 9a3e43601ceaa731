"""The `generate` path (ENGINE=generate): transformers' own `generate()` for one prompt.

It is the ground truth the fast engine is checked against, and the path used where the fast
engine is not available.
"""

from __future__ import annotations

import copy
import threading

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .sampling import SamplingParams


def generation_config_for(model, params: SamplingParams):
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = params.max_new_tokens
    config.return_dict_in_generate = True
    config.do_sample = not params.greedy
    # Explicit values throughout: generate() would fill None from the checkpoint's defaults.
    # top_k 0 and top_p 1.0 are how transformers itself spells "off".
    config.temperature = 1.0 if params.greedy else params.temperature
    config.top_k = params.top_k
    config.top_p = 1.0 if params.greedy else params.top_p
    if params.ras_enabled:
        config.ras_win_len = params.ras_win_len
        config.ras_win_max_num_repeat = params.ras_win_max_num_repeat
    else:
        # generate() fills None from the checkpoint's defaults (RAS on), and a window of 0 would
        # mean the whole stream; a threshold no window can reach turns RAS off.
        config.ras_win_len = 1
        config.ras_win_max_num_repeat = 2**31
    return config


class _StopWhenSet(StoppingCriteria):
    """Ends generate() at its next step once `stop` is set (the caller is gone or cancelled)."""

    def __init__(self, stop) -> None:
        self.stop = stop

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def transformers_generate(model, inputs: dict[str, torch.Tensor], params: SamplingParams, seed: int,
                          stop: threading.Event | None = None) -> torch.Tensor:
    """Generate one chunk; returns the generated columns `[L, num_codebooks]` (delayed, BOS first).
    Setting `stop` ends it within one step (the columns so far come back).

    The seed drives every random draw (sampling and RAS resampling) through a forked RNG, so a
    request neither reads nor disturbs the global generator other callers use.
    """
    config = generation_config_for(model, params)
    # manual_seed also seeds every CUDA device: fork (and restore) all of them.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        criteria = StoppingCriteriaList([_StopWhenSet(stop)] if stop is not None else [])
        out = model.generate(**inputs, generation_config=config, stopping_criteria=criteria)
    new_steps = out.sequences.shape[1] - inputs["input_ids"].shape[1]
    return out.audio_sequences[0, out.audio_sequences.shape[1] - new_steps :]
