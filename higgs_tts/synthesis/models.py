"""The model holder: the loaded model and codec, the generator made for them, and the switch that
stops every generation at shutdown. Runs (run.py) read it; they never load or close anything.

    model() -> (LoadedModel, loaded now)   loads on first use (the process's ModelCache)
    generator(loaded)                      the generator for that model (a new model, a new one)
    decode(frames [T, K]) -> float32       T * hop samples
    engine_load(), stop_all(), prepare(), unload()
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from ..core.checkpoint import LoadedModel, ModelCache
from ..settings import Settings
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
        if self._generator is not None:
            self._generator.close()
            self._generator = self._generator_model = None

    @torch.inference_mode()
    def decode(self, frames: torch.Tensor) -> np.ndarray:
        """Waveform of `[T, num_codebooks]` frames: exactly T * hop samples."""
        loaded, _ = self.model()
        if frames.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        codes = frames.transpose(0, 1)[None].to(loaded.device)
        audio = loaded.codec.decode(codes).audio_values
        return audio.reshape(-1).float().cpu().numpy()
