"""Give memory back when the worker sits idle."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..synthesis.generator import free_memory

log = logging.getLogger(__name__)


class IdleCleaner:
    """After `idle_seconds` without jobs: collect garbage and free cached GPU memory, and unload
    the model too when `unload` is set. Runs once per idle period, never while a job runs."""

    def __init__(self, synthesizer, idle_seconds: float, unload: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.synthesizer = synthesizer
        self.idle_seconds = idle_seconds
        self.unload = unload
        self.clock = clock
        self._lock = threading.Lock()
        self._active = 0
        self._last_activity = clock()
        self._cleaned = True  # nothing to clean before the first job
        self._stop = threading.Event()

    def job_started(self) -> None:
        with self._lock:
            self._active += 1
            self._last_activity = self.clock()
            self._cleaned = False

    def job_finished(self) -> None:
        with self._lock:
            self._active -= 1
            self._last_activity = self.clock()

    def check(self) -> str | None:
        """Clean up if the worker has been idle long enough; returns what was done."""
        with self._lock:
            idle = self._active == 0 and self.clock() - self._last_activity >= self.idle_seconds
            if not idle or self._cleaned:
                return None
            self._cleaned = True
        unloaded = self.unload and self.synthesizer.unload()
        free_memory()
        action = "unloaded the model and freed memory" if unloaded else "freed cached memory"
        log.info("idle for %.0f s: %s", self.idle_seconds, action)
        return action

    def start(self) -> None:
        if self.idle_seconds <= 0:
            return
        period = max(1.0, min(self.idle_seconds / 4, 30.0))

        def loop() -> None:
            while not self._stop.wait(period):
                self.check()

        threading.Thread(target=loop, name="idle-cleaner", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
