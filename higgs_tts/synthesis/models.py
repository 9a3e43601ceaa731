"""The model holder: the loaded model and codec, the generator made for them, and the switch that
stops every generation at shutdown. Runs (run.py) read it; they never load or close anything.

    model() -> (LoadedModel, loaded now)   loads on first use (the process's ModelCache)
    generator(loaded)                      the generator for that model (a new model, a new one)
    decode(frames [T, K]) -> float32       T * hop samples, by the codec worker (codec_worker.py):
                                           every thread's pieces batched, off the engine's stream
    engine_load(), engine_size(), codec_stats(), stop_all(), prepare(), unload()
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from ..core.checkpoint import LoadedModel, ModelCache
from ..settings import Settings
from .codec_worker import CodecStats, CodecWorker
from .generator import Generator, make_generator


class ModelHolder:
    """Requests may come from many threads at once: with the fast engine their chunks are decoded
    together by the scheduler; the generate() path takes them one at a time."""

    def __init__(self, settings: Settings | None = None, models: ModelCache | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._models = models or ModelCache()
        self._generator_lock = threading.Lock()
        self._generator: Generator | None = None
        self._generator_model = None  # the model the generator was made for
        self._codec_lock = threading.Lock()
        self._codec: CodecWorker | None = None  # for the loaded model's codec (a new codec, a new worker)
        self._codec_stats = CodecStats()  # kept across workers: counts since the process started
        self.stopping = threading.Event()  # set by stop_all(): every generation ends at its next step

    def model(self) -> tuple[LoadedModel, bool]:
        """The loaded model and whether this call loaded it."""
        return self._models.get(self.settings)

    def loaded_model(self) -> LoadedModel | None:
        """The model if it is loaded; never loads."""
        return self._models.peek(self.settings)

    def generator(self, loaded: LoadedModel) -> Generator:
        """The generator for the loaded model (made on first use; a new model gets a new one)."""
        with self._generator_lock:
            if self._generator is None or self._generator_model is not loaded.model:
                self._close_generator()
                self._generator, self._generator_model = make_generator(self.settings, loaded.model), loaded.model
            return self._generator

    def engine_load(self) -> tuple[int, int, int]:
        """(running sequences, waiting sequences, admitted requests); zeros before the first request."""
        generator = self._generator
        return (0, 0, 0) if generator is None else generator.load()

    def engine_size(self) -> dict | None:
        """The fast engine's slots and queue and why ({"slots", "queue", "max_len", "sized_by"}); None
        before the first request, or with the generate() path."""
        generator = self._generator
        size = None if generator is None else generator.size
        if size is None:
            return None
        return {"slots": size.slots, "queue": size.queue, "max_len": self.settings.engine_max_len,
                "sized_by": size.sized_by}

    def stop_all(self) -> None:
        """End every generation at its next step (Cancelled), now and from now on: the process is
        shutting down, and nothing should hold it."""
        self.stopping.set()

    def prepare(self) -> None:
        """Load the model and start the generator (the engine captures its CUDA graphs), so that
        the first request waits for neither."""
        loaded, _ = self.model()
        self.generator(loaded)

    def unload(self) -> bool:
        """Free the model (after a long idle time); the next request loads it again."""
        with self._generator_lock:
            self._close_generator()
            return self._models.unload()

    def _close_generator(self) -> None:
        """Close the generator and the codec worker (a new model, or unload): whatever still waits
        on either fails with an error."""
        if self._generator is not None:
            self._generator.close()
            self._generator = self._generator_model = None
        with self._codec_lock:
            if self._codec is not None:
                self._codec.close()
                self._codec = None

    def decode(self, frames: torch.Tensor) -> np.ndarray:
        """Waveform of `[T, num_codebooks]` frames: exactly T * hop samples. Decoded by the codec
        worker, batched with other threads' pieces of the same length."""
        if frames.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        return self._codec_worker(self.model()[0]).decode(frames)

    def _codec_worker(self, loaded: LoadedModel) -> CodecWorker:
        with self._codec_lock:
            if self._codec is None or self._codec.codec is not loaded.codec or not self._codec.alive:
                if self._codec is not None:  # another model's, or one whose thread stopped: a new one
                    self._codec.close()
                self._codec = CodecWorker(loaded.codec, loaded.device, stats=self._codec_stats)
            return self._codec

    def codec_stats(self) -> tuple[int, int, int]:
        """(codec calls, pieces decoded, pieces waiting): calls below pieces mean batched decodes."""
        codec = self._codec
        return self._codec_stats.calls, self._codec_stats.pieces, 0 if codec is None else codec.waiting()
