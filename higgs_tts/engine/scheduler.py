"""Continuous batching: requests join the running batch between bursts and leave when they end.

    submit(request) -> Sequence          from any thread; `sequence.pieces()` yields its columns
    engine thread:  admit waiting sequences into free slots (prefill), run one burst for every
                    occupied slot, hand the columns out, retire ended or cancelled sequences

The KV cache for `slots` sequences of `max_len` positions is allocated once, up front, so a
busy worker never runs out of memory: sequences beyond the free slots wait their turn. Admission
is per request (`with scheduler.request():`), not per sequence: at most `slots + max_waiting`
requests are let in, the next one is refused at once with EngineBusy, and a request that got in
never hears "busy" halfway through its text. Newcomers are prefilled between bursts, so running
streams keep flowing while others join.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from .batch import Batch
from .sequence import EngineRequest, Sequence

log = logging.getLogger(__name__)


class EngineBusy(RuntimeError):
    """Every slot is taken and the waiting queue is full."""


class Scheduler:
    def __init__(self, model, slots: int = 8, max_len: int = 4096, max_waiting: int = 32, check_every: int = 16,
                 use_cuda_graphs: bool | None = None) -> None:
        graphs = model.device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        self.batch = Batch(model, slots, max_len, check_every, use_cuda_graphs=graphs, pad_rows=graphs)
        self.slots, self.max_len, self.max_requests = slots, max_len, slots + max_waiting
        self._requests = 0  # admitted requests, running or waiting
        self._waiting: deque[Sequence] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def fits(self, request: EngineRequest) -> bool:
        return int(request.inputs["input_ids"].shape[1]) + request.params.max_new_tokens <= self.max_len

    @contextmanager
    def request(self) -> Iterator[Scheduler]:
        """Admission for one request (all the sequences of its text); EngineBusy when full."""
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine has stopped")
            if self._requests >= self.max_requests:
                raise EngineBusy(f"the engine is busy: {self._requests} requests admitted, {self.slots} decoding at "
                                 "once; try again shortly")
            self._requests += 1
        try:
            yield self
        finally:
            with self._wake:
                self._requests -= 1

    def submit(self, request: EngineRequest, ignore_eos: bool = False) -> Sequence:
        sequence = Sequence(request, ignore_eos)
        if sequence.needed_len > self.max_len:
            raise ValueError(f"prompt ({sequence.prompt_len}) plus max_new_tokens ({sequence.max_new_tokens}) is "
                             f"above the engine's {self.max_len} positions (ENGINE_MAX_LEN)")
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine has stopped")
            self._waiting.append(sequence)
            self._wake.notify()
        return sequence

    def load(self) -> tuple[int, int]:
        """(running, waiting) sequences."""
        with self._wake:
            return len(self.batch.sequences), len(self._waiting)

    @property
    def admitted(self) -> int:
        """Requests let in and not yet finished."""
        return self._requests

    def close(self) -> None:
        """Stop the engine thread; whatever was running or waiting fails with an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=60)

    def _admit(self) -> list[tuple[Sequence, int]]:
        with self._wake:
            while not self._closed and not self.batch.sequences and not self._waiting:
                self._wake.wait()
            free = self.batch.free_slots()
            joining = []
            while self._waiting and free:
                sequence = self._waiting.popleft()
                if sequence.cancelled.is_set():
                    sequence.finish()
                    continue
                joining.append((sequence, free.pop(0)))
        return joining

    def _loop(self) -> None:
        try:
            captured = self.batch.capture_all()
            if captured:
                log.info("engine ready: %d CUDA graphs for %d slots x %d positions", captured, self.slots,
                         self.max_len)
            while not self._closed:
                self._serve_once()
        except Exception as exc:  # the loop itself broke: nobody may wait forever
            log.exception("the engine stopped")
            self._fail_all(exc)
            if _is_device_error(exc):
                _exit_for_device_error()
            return
        self._fail_all(RuntimeError("the engine has stopped"))

    def _serve_once(self) -> None:
        for sequence, slot in self._admit():
            try:
                self.batch.admit(sequence, slot)
            except Exception as exc:  # e.g. out of memory in one prefill: that request fails alone
                if _is_device_error(exc):
                    raise
                log.warning("prefill failed: %s", exc)
                sequence.finish(exc)
        if not self.batch.sequences:
            return
        try:
            result = self.batch.burst()
        except Exception as exc:  # the step failed for the whole batch: every running request fails
            if _is_device_error(exc):
                raise
            log.exception("decode step failed")
            for slot in list(self.batch.sequences):
                self.batch.release(slot).finish(exc)
            return
        for _, sequence, columns, ended in self.batch.take(result):
            sequence.deliver(columns)
            if ended:
                sequence.finish()

    def _fail_all(self, error: BaseException) -> None:
        with self._wake:
            self._closed = True
            for slot in list(self.batch.sequences):
                self.batch.release(slot).finish(error)
            while self._waiting:
                self._waiting.popleft().finish(error)


def _is_device_error(exc: BaseException) -> bool:
    """An error that leaves the CUDA context unusable (a device-side assert, an illegal address)."""
    import torch

    return isinstance(exc, torch.AcceleratorError) and "out of memory" not in str(exc).lower()


def _exit_for_device_error() -> None:
    """Every later request would fail the same way: end the process so the platform restarts the
    worker (RunPod does), rather than serving errors until someone notices."""
    import os

    log.critical("CUDA context lost; exiting so that the worker is restarted")
    logging.shutdown()
    os._exit(70)
