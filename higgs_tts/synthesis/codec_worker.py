"""Codec decodes for every request, batched, in one thread of their own (and on CUDA a stream of their own).

    worker = CodecWorker(codec, device)
    worker.decode(frames [T, K]) -> float32 [T * hop]   from any thread: waits for its piece
    worker.close()                                       queued callers get an error; the thread ends

Each request's thread used to call the codec itself: N streams made N small codec calls from N
threads on the default CUDA stream, contending with each other and with the engine thread. Here
one thread takes every piece pending at once, groups the pieces of EQUAL frame count and decodes
each group in one call with a batch dimension, at most `max_batch` pieces a call. Pieces are never
padded to a common length: the codec's decoder is convolutional and non-causal, so padding would
change a piece's last samples. The streaming decoder's windows have few lengths (16, 56, 88, then
104 frames: core/streaming.py), so concurrent streams meet in the same groups.

A piece's samples in a batch equal its samples alone within float rounding, not bitwise: a
convolution over another batch size rounds differently (about 2e-7 of the signal's peak on CPU,
tested). So the cap is per device: on CUDA, where batching saves most of the launches and the
engine's codes already vary with the batch's shape, MAX_CODEC_BATCH; on a CPU, where the codec
is compute-bound and batching buys little, 1: there a request's audio is bitwise the same alone
or in a crowd (tests/delivery/test_load.py), and the worker only orders the calls.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)

# Pieces decoded in one codec call at most, on CUDA, and frames in one call at most: 16 streaming
# windows of 104 frames are about 70 s of audio, as much as one long request's whole decode, so a batch
# needs no more memory than that. Whole requests of equal length (same text, voice and seed) are
# therefore decoded a few at a time, never 16 long ones at once.
MAX_CODEC_BATCH = 16
MAX_CODEC_BATCH_FRAMES = 16 * 104
CPU_CODEC_BATCH = 1  # on a CPU: bitwise the same audio alone or in a crowd (see above)
CLOSE_SECONDS = 60.0  # close() waits this long for a decode under way before giving up on the thread

# Workers still running: closed at exit, before the interpreter tears down (a daemon thread caught
# inside a torch call then aborts the process, as the engine's would: engine/scheduler.py).
_started: weakref.WeakSet[CodecWorker] = weakref.WeakSet()


@dataclass
class CodecStats:
    """Counts since the process started (one per model holder, kept across reloads)."""

    calls: int = 0  # codec calls made
    pieces: int = 0  # pieces decoded by them (calls with a batch above 1 decode several)
    largest_batch: int = 0  # the most pieces one call decoded


@dataclass
class _Piece:
    frames: torch.Tensor  # [T, K]
    ready: torch.cuda.Event | None  # recorded on the caller's stream when the frames live on a GPU
    result: Future = field(default_factory=Future)  # float32 [T * hop]


class CodecWorker:
    def __init__(self, codec, device: torch.device, max_batch: int | None = None,
                 stats: CodecStats | None = None) -> None:
        """`max_batch`: pieces a call at most (None: the device's, MAX_CODEC_BATCH or CPU_CODEC_BATCH)."""
        self.codec, self.device = codec, torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # "cuda": the current card, by number
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_batch = max_batch or (MAX_CODEC_BATCH if self.device.type == "cuda" else CPU_CODEC_BATCH)
        self.stats = stats or CodecStats()
        self._pending: list[_Piece] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="codec", daemon=True)
        self._thread.start()
        _started.add(self)

    # -- from any thread ------------------------------------------------------------------------

    def decode(self, frames: torch.Tensor) -> np.ndarray:
        """Waveform of `[T, K]` frames: exactly T * hop float32 samples. Raises what the codec raised,
        or RuntimeError when the worker is closed before the piece was decoded."""
        if frames.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        ready = torch.cuda.current_stream(frames.device).record_event() if frames.is_cuda else None
        piece = _Piece(frames, ready)
        with self._wake:
            if self._closed:
                raise RuntimeError("the codec has stopped")
            self._pending.append(piece)
            self._wake.notify()
        return piece.result.result()

    def waiting(self) -> int:
        """Pieces submitted and not yet taken by the worker."""
        with self._wake:
            return len(self._pending)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """No more pieces: those still queued fail at once; a decode under way finishes; the thread ends."""
        with self._wake:
            self._closed = True
            queued, self._pending = self._pending, []
            self._wake.notify()
        _fail(queued, RuntimeError("the codec has stopped"))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=CLOSE_SECONDS)

    # -- the worker thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        taken: list[_Piece] = []
        try:
            stream = None
            if self.device.type == "cuda":  # its own stream: never behind the engine's bursts, nor they behind it
                torch.cuda.set_device(self.device)
                stream = torch.cuda.Stream(self.device)
            with torch.inference_mode(), torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                while True:
                    with self._wake:
                        while not self._closed and not self._pending:
                            self._wake.wait()
                        if self._closed:
                            return
                        taken, self._pending = self._pending, []
                    for group in groups(taken, self.max_batch):
                        self._run(group)
        except Exception as exc:  # the loop itself broke (or never started): nobody may wait forever
            log.exception("the codec worker stopped")
            with self._wake:
                self._closed = True
                queued, self._pending = self._pending, []
            _fail([piece for piece in (*taken, *queued) if not piece.result.done()], exc)

    def _run(self, group: list[_Piece]) -> None:
        """One codec call for pieces of one length; if it fails with several, each alone (only the
        pieces that fail by themselves get the error, e.g. out of memory at a large batch)."""
        try:
            audio = self._decode(group)
        except Exception as exc:
            if len(group) == 1:
                group[0].result.set_exception(exc)
                return
            log.warning("a batched codec call of %d pieces failed (%s); decoding them one at a time", len(group), exc)
            for piece in group:
                self._run([piece])
            return
        for piece, samples in zip(group, audio, strict=True):  # a copy each: a row would hold the whole batch
            piece.result.set_result(samples.copy() if len(group) > 1 else samples)

    def _decode(self, group: list[_Piece]) -> np.ndarray:
        """`[B, T * hop]` float32 on the host for B pieces of T frames each."""
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        for piece in group:
            if piece.ready is not None:  # frames a caller's stream wrote: read them after it did
                stream.wait_event(piece.ready)
        codes = torch.stack([piece.frames.to(self.device) for piece in group]).transpose(1, 2)  # [B, K, T]
        audio = self.codec.decode(codes).audio_values  # [B, 1, T * hop]
        # A blocking copy to the host: it waits for this stream's decode before the host reads it.
        host = audio.reshape(len(group), -1).float().cpu().numpy()
        self.stats.calls += 1
        self.stats.pieces += len(group)
        self.stats.largest_batch = max(self.stats.largest_batch, len(group))
        return host


@atexit.register
def _close_started() -> None:
    for worker in list(_started):
        worker.close()


def groups(pieces: list[_Piece], max_batch: int, max_frames: int = MAX_CODEC_BATCH_FRAMES) -> list[list[_Piece]]:
    """Pieces of equal shape together, at most `max_batch` and `max_frames` frames a group (a piece longer
    than that alone), the shortest pieces first: a stream's first piece (16 frames) never waits behind a
    whole request's decode taken at the same time."""
    by_shape: dict[tuple[int, ...], list[_Piece]] = {}
    for piece in pieces:
        by_shape.setdefault(tuple(piece.frames.shape), []).append(piece)
    ordered = sorted(by_shape.values(), key=lambda same: same[0].frames.shape[0])  # stable: ties by arrival
    out = []
    for same in ordered:
        size = max(1, min(max_batch, max_frames // max(1, same[0].frames.shape[0])))
        out += [same[i:i + size] for i in range(0, len(same), size)]
    return out


def _fail(pieces: list[_Piece], error: BaseException) -> None:
    for piece in pieces:
        piece.result.set_exception(error)
