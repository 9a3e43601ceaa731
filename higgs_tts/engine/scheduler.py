"""Continuous batching, and the engine's one loop: `step()` = schedule -> run -> postprocess.

    submit(request) -> Sequence   from any thread; `sequence.pieces()` yields its columns
    step():                       admit waiting sequences into free slots (one packed prefill on
                                  CUDA, each alone on a CPU), launch one
                                  burst for every occupied slot, hand out the columns of the last
                                  burst and retire ended or cancelled sequences
    start():                      run `step()` in an engine thread of its own (the servers);
                                  without it, the caller drives `step()` (`engine.Engine`)

On CUDA the bursts are double-buffered: burst n+1 is launched before the host waits for burst n's
columns, so the GPU never idles while the host hands out. A slot freed by burst n may run one
more burst for its old owner; that burst's rows are marked done and hand out nothing.

The KV cache for `slots` sequences of `max_len` positions is allocated once, up front, so a busy
worker never runs out of memory: sequences beyond the free slots wait their turn. Admission is
per request (`with scheduler.request():`), not per sequence: at most `slots + max_waiting`
requests are let in, the next one is refused at once with EngineBusy, and a request that got in
never hears "busy" halfway through its text.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .batch import Batch, Burst
from .prefix_cache import prefix_cache_for
from .sequence import EngineRequest, Sequence

log = logging.getLogger(__name__)

# Engine threads still running. They are stopped at exit, before the interpreter tears down: a daemon
# thread caught inside a torch call then aborts the process ("terminate called without an active
# exception", exit status 134).
_started: weakref.WeakSet[Scheduler] = weakref.WeakSet()

STEPS_PER_SYNC = 16  # decode steps per burst: one host sync each


class EngineBusy(RuntimeError):
    """Every slot is taken and the waiting queue is full."""


class Scheduler:
    def __init__(self, model, slots: int = 8, max_len: int = 4096, max_waiting: int = 32,
                 steps_per_sync: int = STEPS_PER_SYNC, use_cuda_graphs: bool | None = None,
                 pad_rows: bool | None = None, pipelined: bool | None = None, prefix_cache_bytes: int = 0,
                 prefill_pack_tokens: int | None = None) -> None:
        on_cuda = model.device.type == "cuda"
        graphs = on_cuda if use_cuda_graphs is None else use_cuda_graphs
        # Padding rows to bucket sizes bounds the graphs captured; eager steps gain nothing by it.
        self.batch = Batch(model, slots, max_len, steps_per_sync, use_cuda_graphs=graphs,
                           pad_rows=graphs if pad_rows is None else pad_rows,
                           prefix_cache=prefix_cache_for(model, prefix_cache_bytes), pack_tokens=prefill_pack_tokens)
        # On a CPU the copy is done at once: nothing to overlap, and hand-outs would come a burst late.
        self.pipelined = on_cuda if pipelined is None else pipelined
        self.slots, self.max_len, self.max_requests = slots, max_len, slots + max_waiting
        self._requests = 0  # admitted requests, running or waiting
        self._waiting: deque[Sequence] = deque()
        self._in_flight: Burst | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- from any thread ------------------------------------------------------------------------

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

    @property
    def idle(self) -> bool:
        return not self.batch.sequences and not self._waiting and self._in_flight is None

    # -- the loop -------------------------------------------------------------------------------

    def step(self) -> None:
        """One round: schedule -> run -> postprocess."""
        self.admit()
        self.run()

    def _hand_out(self) -> None:
        """Wait for the burst in flight and hand its columns out."""
        burst, self._in_flight = self._in_flight, None
        self._postprocess(burst, self.batch.collect(burst))

    def _can_admit(self) -> bool:
        with self._wake:
            return bool(self._waiting) and len(self.batch.sequences) < self.batch.capacity

    def admit(self) -> None:
        """Schedule: prefill waiting sequences into free slots."""
        if self._in_flight is not None and self._can_admit():
            self._hand_out()  # before a prefill, which would keep every stream waiting (and frees slots first)
        joining = self._schedule()
        if joining and self._in_flight is not None:
            # one arrived after that look: a prefill never overlaps a burst (a wider RAS window captures anew)
            self._hand_out()
        if joining and self.batch.device.type == "cuda":
            # Requests were put on the device by their own threads, on the default stream.
            torch.cuda.current_stream(self.batch.device).wait_stream(torch.cuda.default_stream(self.batch.device))
        if not joining:
            return
        try:
            self.batch.admit_many(joining)  # one packed prefill where packing is on
            return
        except Exception as exc:
            if _is_device_error(exc):
                raise
            if len(joining) == 1:
                log.warning("prefill failed: %s", exc)
                joining[0][0].finish(exc)
                return
            log.warning("packed prefill failed (%s): each sequence is prefilled alone", exc)
        for sequence, slot in joining:
            if self.batch.sequences.get(slot) is sequence:  # admitted before the failure
                continue
            try:
                self.batch.admit(sequence, slot)
            except Exception as exc:  # e.g. out of memory in one prefill: that request fails alone
                if _is_device_error(exc):
                    raise
                log.warning("prefill failed: %s", exc)
                sequence.finish(exc)

    def run(self) -> None:
        """Run a burst for every occupied slot, and postprocess: hand out the last burst's columns."""
        try:
            launched = self.batch.launch() if self.batch.sequences else None
            if self.pipelined:  # hand out the previous burst while this one runs
                launched, self._in_flight = self._in_flight, launched
            if launched is not None:
                self._postprocess(launched, self.batch.collect(launched))
        except Exception as exc:  # the step failed for the whole batch: every running request fails
            if _is_device_error(exc):
                raise
            log.exception("decode step failed")
            self._in_flight = None
            for slot in list(self.batch.sequences):
                self.batch.release(slot).finish(exc)

    def _schedule(self) -> list[tuple[Sequence, int]]:
        """Waiting sequences paired with free slots, oldest first."""
        with self._wake:
            free = self.batch.free_slots()
            joining = []
            while self._waiting and free:
                sequence = self._waiting.popleft()
                if sequence.cancelled.is_set():
                    sequence.finish()
                    continue
                joining.append((sequence, free.pop(0)))
        return joining

    def drop_cancelled(self) -> None:
        """Release cancelled sequences now, without running a burst for them (a caller that drives
        `step()` itself and stops early)."""
        if self._in_flight is not None:
            self._hand_out()
        for slot, sequence in list(self.batch.sequences.items()):
            if sequence.cancelled.is_set():
                self.batch.release(slot).finish()
        with self._wake:
            for sequence in [s for s in self._waiting if s.cancelled.is_set()]:
                self._waiting.remove(sequence)
                sequence.finish()

    @staticmethod
    def _postprocess(burst: Burst, taken: list[tuple[int, Sequence, int, bool]]) -> None:
        for slot, sequence, count, ended in taken:
            sequence.deliver(burst.columns, slot, count)
            if ended:
                sequence.finish()

    # -- in a thread of its own -----------------------------------------------------------------

    def start(self) -> Scheduler:
        """Run the loop in an engine thread (CUDA graphs for every shape are captured first)."""
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()
        _started.add(self)
        return self

    def close(self) -> None:
        """Stop the engine thread; whatever was running or waiting fails with an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=60)
        else:
            self._fail_all(RuntimeError("the engine has stopped"))

    def _loop(self) -> None:
        try:
            if self.batch.device.type == "cuda":  # its own stream: codec work elsewhere never queues behind it
                torch.cuda.set_device(self.batch.device)
                torch.cuda.set_stream(torch.cuda.Stream(self.batch.device))
            captured = self.batch.capture_all()
            if captured:
                log.info("engine ready: %d CUDA graphs for %d slots x %d positions", captured, self.slots,
                         self.max_len)
            while True:
                with self._wake:
                    while not self._closed and self.idle:
                        self._wake.wait()
                    if self._closed:
                        break
                self.step()
        except Exception as exc:  # the loop itself broke: nobody may wait forever
            log.exception("the engine stopped")
            self._fail_all(exc)
            if _is_device_error(exc):
                _exit_for_device_error()
            return
        self._fail_all(RuntimeError("the engine has stopped"))

    def _fail_all(self, error: BaseException) -> None:
        with self._wake:
            self._closed = True
            self._in_flight = None
            for slot in list(self.batch.sequences):
                self.batch.release(slot).finish(error)
            while self._waiting:
                self._waiting.popleft().finish(error)


@atexit.register
def _close_started() -> None:
    for scheduler in list(_started):
        scheduler.close()


def _is_device_error(exc: BaseException) -> bool:
    """An error that leaves the CUDA context unusable (a device-side assert, an illegal address)."""
    return isinstance(exc, torch.AcceleratorError) and "out of memory" not in str(exc).lower()


def _exit_for_device_error() -> None:
    """Every later request would fail the same way: end the process so the platform restarts the
    worker (RunPod does), rather than serving errors until someone notices."""
    import os

    log.critical("CUDA context lost; exiting so that the worker is restarted")
    logging.shutdown()
    os._exit(70)
