"""Every sampling and chunking knob, defined once: its type, default, bounds and meaning.

The API schema (`service/schema.py`), the command line, the synthesizer's request and both decode
loops read these definitions, so a new knob is one field here plus the code that implements it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

MAX_SEED = 2**31 - 1  # seeds are 0..MAX_SEED, in every surface
# Temperatures below this decode greedily: dividing logits by 1e-45 overflows every sampler.
GREEDY_BELOW = 1e-3


def knob(default, *, help: str, ge: float | None = None, gt: float | None = None, le: float | None = None):
    """A dataclass field with its bounds (`ge`/`gt` below, `le` above) and its meaning."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "help": help})


@dataclass(frozen=True)
class Knob:
    name: str
    type: type  # int or float
    default: float | None  # None: the knob is optional (null allowed)
    ge: float | None
    gt: float | None
    le: float | None
    help: str

    def rule(self) -> str:
        """The bounds in words, e.g. 'an integer from 1 to 8192'."""
        kind = "an integer" if self.type is int else "a number"
        if self.ge is not None and self.le is not None:
            return f"{kind} from {self.ge:g} to {self.le:g}"
        low = f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}" if self.gt is not None else None
        high = f"<= {self.le:g}" if self.le is not None else None
        rule = f"{kind} {' and '.join(b for b in (low, high) if b)}"
        return rule + " or null" if self.default is None else rule

    def check(self, value: object) -> None:
        if value is None and self.default is None:
            return
        typed = isinstance(value, int) if self.type is int else isinstance(value, int | float)
        if isinstance(value, bool) or not typed:
            raise ValueError(f"{self.name} must be {self.rule()}; got {value!r}")
        if value != value:  # NaN
            raise ValueError(f"{self.name} must be {self.rule()}; got {value!r}")
        if ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le)):
            raise ValueError(f"{self.name} must be {self.rule()}; got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """Per-chunk sampling settings, with the reference pipeline's defaults."""

    temperature: float = knob(0.8, ge=0.0, le=2.0,
                              help="below 0.001 = greedy (RAS still redraws repeats; see docs/api.md)")
    top_k: int = knob(50, ge=0, help="keep the k most likely codes; 0 disables")
    top_p: float = knob(0.95, gt=0.0, le=1.0, help="nucleus sampling; 1 disables")
    max_new_tokens: int = knob(2048, ge=1, le=8192, help="audio frames per chunk; 25 = 1 s")
    ras_win_len: int = knob(7, ge=0, le=1000, help="repetition-aware sampling window; 0 disables")
    ras_win_max_num_repeat: int = knob(2, ge=0, le=1000, help="repeats in the window before a redraw; 0 disables")

    def __post_init__(self) -> None:
        for k in sampling_knobs():
            k.check(getattr(self, k.name))

    @classmethod
    def from_fields(cls, source: object) -> SamplingParams:
        """Read the same-named attributes of `source` (parsed CLI arguments, an API request)."""
        return cls(**{k.name: getattr(source, k.name) for k in sampling_knobs()})

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def ras_enabled(self) -> bool:
        return self.ras_win_len > 0 and self.ras_win_max_num_repeat > 0


@dataclass(frozen=True)
class ChunkParams:
    """How a long text is cut into generation chunks (core/text.py chunk_text), and how much of the
    earlier chunks each chunk's prompt keeps."""

    chunk_max_word_num: int = knob(200, ge=1, le=10_000, help="words a chunk may have (word, sentence)")
    chunk_max_num_turns: int = knob(1, ge=1, le=1000, help="speaker turns a chunk may have (speaker)")
    generation_chunk_buffer_size: int | None = knob(None, ge=0, le=1000,
                                                    help="earlier chunks kept as context; null: all")

    def __post_init__(self) -> None:
        for k in chunk_knobs():
            k.check(getattr(self, k.name))

    @staticmethod
    def values_from(source: object) -> dict:
        """The same-named attributes of `source` (parsed CLI arguments, an API request), by knob name."""
        return {k.name: getattr(source, k.name) for k in chunk_knobs()}


def _knobs(cls: type) -> list[Knob]:
    types = {"float": float, "int": int, "int | None": int}
    return [
        Knob(f.name, types[f.type] if isinstance(f.type, str) else f.type, f.default, f.metadata["ge"],
             f.metadata["gt"], f.metadata["le"], f.metadata["help"])
        for f in dataclasses.fields(cls)
    ]


def sampling_knobs() -> list[Knob]:
    """The knobs of SamplingParams, in field order."""
    return _knobs(SamplingParams)


def chunk_knobs() -> list[Knob]:
    """The knobs of ChunkParams, in field order."""
    return _knobs(ChunkParams)
