"""The two ways to turn a prompt into audio columns, behind one protocol.

    fast:      our engine (engine/), requests decoded together by the scheduler (the default, "auto")
    generate:  transformers' own generate(), one request at a time (the ground truth tests compare with)

The kinds are ENGINE's values (settings.ENGINES), "auto" resolved.

The service above sees only this module: admission (EngineBusy when full), load, freeing memory.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import torch

from ..core.generate import transformers_generate
from ..core.sampling import SamplingParams
from ..engine.engine import Engine, EngineRequest
from ..engine.graphs import free_cached_memory
from ..engine.scheduler import EngineBusy, Scheduler
from ..engine.sizing import EngineSize, engine_size
from ..settings import Settings

log = logging.getLogger(__name__)

GENERATORS = ("generate", "fast")

__all__ = ["GENERATORS", "EngineBusy", "FastGenerator", "Generator", "TransformersGenerator", "free_memory",
           "make_generator"]


class Generator(Protocol):
    def admission(self) -> AbstractContextManager:
        """One place for a whole request (all its chunks); raises EngineBusy when there is none."""

    def generate(self, inputs: dict[str, torch.Tensor], params: SamplingParams, seed: int,
                 stop: threading.Event | None = None) -> Iterator[torch.Tensor]:
        """The prompt's generated columns `[n, K]`, in pieces; closing the iterator early stops it,
        and so does setting `stop` (within one step, where a piece is a whole chunk)."""

    def load(self) -> tuple[int, int, int]:
        """(running sequences, waiting sequences, admitted requests)."""

    size: EngineSize | None  # slots and queue, and why (None: one request at a time, no queue of its own)

    def close(self) -> None: ...


class TransformersGenerator:
    """transformers' generate(), one prompt at a time."""

    size = None

    def __init__(self, model) -> None:
        self.model = model
        self._lock = threading.Lock()  # generate() calls run one at a time
        self._running = 0

    def admission(self) -> AbstractContextManager:
        return contextlib.nullcontext()

    def generate(self, inputs, params, seed, stop=None):
        with self._lock:
            self._running = 1
            try:
                yield transformers_generate(self.model, inputs, params, seed, stop)
            finally:
                self._running = 0

    def load(self) -> tuple[int, int, int]:
        return self._running, 0, 0

    def close(self) -> None:
        pass


class FastGenerator:
    """Our engine: the continuously batched scheduler; a prompt too long for its cache runs alone, eagerly."""

    def __init__(self, model, size: EngineSize, max_len: int, prefix_cache_bytes: int = 0) -> None:
        self.model, self.size = model, size
        self.scheduler = Scheduler(model, size.slots, max_len, size.queue,
                                   prefix_cache_bytes=prefix_cache_bytes).start()
        # Long prompts run alone, eagerly: no second graph capture beside the scheduler's.
        self.solo = Engine(model, use_cuda_graphs=False, prefix_cache_bytes=prefix_cache_bytes)
        self._solo_lock = threading.Lock()
        self._solo_running = 0

    def admission(self) -> AbstractContextManager:
        return self.scheduler.request()

    def generate(self, inputs, params, seed, stop=None):  # pieces come per burst: the caller closes on stop
        request = EngineRequest(inputs, params, seed)
        if self.scheduler.fits(request):
            yield from self.scheduler.submit(request).pieces()
            return
        log.info("prompt does not fit the shared cache (ENGINE_MAX_LEN); generating it alone")
        with self._solo_lock:
            self._solo_running = 1
            try:
                yield from self.solo.stream(request)
            finally:
                self._solo_running = 0

    def load(self) -> tuple[int, int, int]:
        running, waiting = self.scheduler.load()
        return running + self._solo_running, waiting, self.scheduler.admitted

    def close(self) -> None:
        self.scheduler.close()


def generator_kind(settings: Settings) -> str:
    """'fast' or 'generate': the ENGINE setting, with 'auto' meaning fast, on CPU as on CUDA (one engine,
    so streaming and batching behave the same everywhere)."""
    return "fast" if settings.engine == "auto" else settings.engine


def make_generator(settings: Settings, model) -> Generator:
    if generator_kind(settings) == "generate":
        return TransformersGenerator(model)
    # Sized after the model and codec are loaded, before the KV cache is allocated.
    size = engine_size(model, settings.engine_slots, settings.engine_max_len, settings.engine_queue,
                       settings.prefix_cache_max_bytes)
    log.info("fast engine: %d slots of %d positions, %d requests may wait (%s)", size.slots,
             settings.engine_max_len, size.queue, size.sized_by)
    return FastGenerator(model, size, settings.engine_max_len, settings.prefix_cache_max_bytes)


def free_memory() -> None:
    """Garbage and cached accelerator memory back to the system (never during a graph capture)."""
    gc.collect()
    free_cached_memory()
