"""The reference generation path: transformers' own `generate()` for one prompt.

It is the ground truth the fast engine is checked against, and the path used where the fast
engine is not available.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Per-chunk sampling settings. `temperature` 0 is greedy; `top_k` 0 and RAS 0 disable them."""

    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    max_new_tokens: int = 2048
    ras_win_len: int = 7
    ras_win_max_num_repeat: int = 2

    def __post_init__(self) -> None:
        checks = (
            ("temperature", 0.0 <= self.temperature <= 2.0, "must be between 0 and 2"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "must be an integer >= 0 (0 disables)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= 8192,
             "must be an integer from 1 to 8192"),
            ("ras_win_len", isinstance(self.ras_win_len, int) and self.ras_win_len >= 0,
             "must be an integer >= 0 (0 disables)"),
            ("ras_win_max_num_repeat", isinstance(self.ras_win_max_num_repeat, int)
             and self.ras_win_max_num_repeat >= 0, "must be an integer >= 0 (0 disables)"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} {rule}; got {getattr(self, name)!r}")

    @classmethod
    def from_fields(cls, source: object) -> SamplingParams:
        """Read the same-named attributes of `source` (parsed CLI arguments, an API request)."""
        return cls(**{f.name: getattr(source, f.name) for f in dataclasses.fields(cls)})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def ras_enabled(self) -> bool:
        return self.ras_win_len > 0 and self.ras_win_max_num_repeat > 0


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


@torch.inference_mode()
def generate_reference(model, inputs: dict[str, torch.Tensor], params: SamplingParams, seed: int) -> torch.Tensor:
    """Generate one chunk; returns the generated columns `[L, num_codebooks]` (delayed, BOS first).

    The seed drives every random draw (sampling and RAS resampling) through a forked RNG, so a
    request neither reads nor disturbs the global generator other callers use.
    """
    config = generation_config_for(model, params)
    # manual_seed also seeds every CUDA device: fork (and restore) all of them.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(**inputs, generation_config=config)
    new_steps = out.sequences.shape[1] - inputs["input_ids"].shape[1]
    return out.audio_sequences[0, out.audio_sequences.shape[1] - new_steps :]
