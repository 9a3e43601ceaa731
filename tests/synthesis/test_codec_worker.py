"""The codec worker on the tiny checkpoint's real codec: pieces from many threads batched by length,
each equal to its decode alone; errors reach their caller; closing never leaves a caller waiting."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import wait_until

from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.synthesis.codec_worker import (
    MAX_CODEC_BATCH,
    MAX_CODEC_BATCH_FRAMES,
    CodecStats,
    CodecWorker,
    _Piece,
    groups,
)
from higgs_tts.synthesis.models import ModelHolder

# A piece in a batch equals itself alone within float rounding: the tiny codec's peak is about
# 0.014 and batched convolutions differ from single ones by about 3e-9 on CPU.
TOLERANCE = 1e-6
BATCH = 16  # on a CPU the worker batches only when told to (CPU_CODEC_BATCH is 1)


@pytest.fixture(scope="module")
def loaded(settings):
    return ModelCache().get(settings)[0]


class GatedCodec:
    """The real codec, whose first call waits for `open` (so pieces pile up behind it), recording
    the shape of every call."""

    def __init__(self, codec) -> None:
        self.codec, self.shapes = codec, []
        self.entered, self.open = threading.Event(), threading.Event()

    def decode(self, codes):
        self.entered.set()
        assert self.open.wait(60)
        self.shapes.append(tuple(codes.shape))
        return self.codec.decode(codes)


def random_frames(count: int, length: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return list(torch.randint(0, 1024, (count, length, 8), generator=generator))


def alone(loaded, frames: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return loaded.codec.decode(frames.T[None].to(loaded.device)).audio_values.reshape(-1).float().cpu().numpy()


def submit_behind_gate(worker: CodecWorker, gated: GatedCodec, pieces: list[torch.Tensor], pool):
    """One piece taken first (held in the gate), then `pieces` from threads of `pool`, all queued."""
    first = pool.submit(worker.decode, pieces[0][:4])
    assert gated.entered.wait(60)
    futures = [pool.submit(worker.decode, piece) for piece in pieces]
    wait_until(lambda: worker.waiting() == len(pieces))
    return first, futures


def decode_queued(loaded, pieces: list[torch.Tensor], max_batch: int | None = BATCH) -> tuple[list, list, CodecStats]:
    """`pieces` queued behind a held first piece, then the gate opened: (each call's shape, each
    piece's audio, the worker's counts). `max_batch` None is the worker's default for the device."""
    gated = GatedCodec(loaded.codec)
    worker = CodecWorker(gated, loaded.device) if max_batch is None else CodecWorker(gated, loaded.device, max_batch)
    try:
        with ThreadPoolExecutor(len(pieces) + 2) as pool:
            first, futures = submit_behind_gate(worker, gated, pieces, pool)
            gated.open.set()
            first.result(60)
            results = [future.result(60) for future in futures]
    finally:
        worker.close()
    assert (worker.stats.calls, worker.stats.pieces) == (len(gated.shapes), len(pieces) + 1)
    return gated.shapes, results, worker.stats


def test_pieces_from_many_threads_are_batched_and_equal_their_decode_alone(loaded):
    pieces = random_frames(6, 104, seed=1)
    shapes, results, stats = decode_queued(loaded, pieces)
    for piece, got in zip(pieces, results, strict=True):
        want = alone(loaded, piece)
        assert got.dtype == np.float32 and got.shape == want.shape == (104 * 960,)
        assert np.abs(got - want).max() <= TOLERANCE
    assert shapes == [(1, 8, 4), (6, 8, 104)]  # one call for the six queued pieces
    assert stats.largest_batch == 6
    assert all(got.flags.owndata for got in results)  # no row holds the whole batch's array


def test_the_batch_is_capped(loaded):
    shapes, _, _ = decode_queued(loaded, random_frames(10, 16, seed=2), max_batch=4)
    assert shapes[1:] == [(4, 8, 16), (4, 8, 16), (2, 8, 16)]


def test_long_pieces_are_batched_by_frames_not_only_by_count():
    def pieces(count, length):
        return [_Piece(torch.zeros(length, 8, dtype=torch.long), None) for _ in range(count)]

    sizes = [len(group) for group in groups(pieces(16, 104), MAX_CODEC_BATCH)]
    assert sizes == [16]  # streaming windows: the whole batch
    sizes = [len(group) for group in groups(pieces(5, 500), MAX_CODEC_BATCH)]
    assert sizes == [3, 2]  # 3 x 500 frames fit in MAX_CODEC_BATCH_FRAMES, 4 would not
    assert 3 * 500 <= MAX_CODEC_BATCH_FRAMES < 4 * 500
    sizes = [len(group) for group in groups(pieces(3, 2000), MAX_CODEC_BATCH)]
    assert sizes == [1, 1, 1]  # whole long requests of equal length: one a call


def test_unequal_lengths_are_never_decoded_together_and_the_shortest_go_first(loaded):
    pieces = [*random_frames(1, 20, seed=4), *random_frames(2, 16, seed=3), *random_frames(1, 16, seed=5)]
    shapes, results, _ = decode_queued(loaded, pieces)
    assert shapes[1:] == [(3, 8, 16), (1, 8, 20)]  # the longer piece came first, and waits
    for piece, got in zip(pieces, results, strict=True):
        assert got.shape == (piece.shape[0] * 960,)
        assert np.abs(got - alone(loaded, piece)).max() <= TOLERANCE


def test_a_codec_error_reaches_its_caller_and_the_others_in_its_batch_still_decode(loaded):
    gated = GatedCodec(loaded.codec)
    worker = CodecWorker(gated, loaded.device, BATCH)
    good = random_frames(2, 16, seed=6)
    bad = torch.full((16, 8), 10**6)  # no such code: the codebook lookup fails
    try:
        with ThreadPoolExecutor(4) as pool:
            first, futures = submit_behind_gate(worker, gated, [good[0], bad, good[1]], pool)
            gated.open.set()
            first.result(60)
            with pytest.raises(IndexError):
                futures[1].result(60)
            for piece, future in zip(good, (futures[0], futures[2]), strict=True):
                assert np.abs(future.result(60) - alone(loaded, piece)).max() <= TOLERANCE
        assert worker.alive  # and it goes on decoding
        assert worker.decode(good[0]).shape == (16 * 960,)
    finally:
        worker.close()


def test_on_a_cpu_pieces_are_decoded_one_a_call_and_bitwise_equal_alone(loaded):
    if loaded.device.type != "cpu":
        pytest.skip("the CPU's default batch")
    pieces = random_frames(3, 56, seed=11)
    shapes, results, _ = decode_queued(loaded, pieces, max_batch=None)
    assert shapes[1:] == [(1, 8, 56)] * 3
    for piece, got in zip(pieces, results, strict=True):
        assert np.array_equal(got, alone(loaded, piece))


def test_close_with_callers_waiting_does_not_hang(loaded):
    gated = GatedCodec(loaded.codec)
    worker = CodecWorker(gated, loaded.device)
    with ThreadPoolExecutor(4) as pool:
        first, futures = submit_behind_gate(worker, gated, random_frames(2, 16, seed=7), pool)
        closing = pool.submit(worker.close)  # waits for the decode under way
        for future in futures:  # the queued pieces fail at once, the decode under way still held
            with pytest.raises(RuntimeError, match="codec has stopped"):
                future.result(60)
        assert not first.done()
        gated.open.set()
        assert first.result(60).shape == (4 * 960,)
        closing.result(60)
    assert not worker.alive
    with pytest.raises(RuntimeError, match="codec has stopped"):
        worker.decode(random_frames(1, 16, seed=8)[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a device the worker cannot start on")
def test_a_worker_that_cannot_start_fails_its_callers_instead_of_leaving_them_waiting(loaded):
    worker = CodecWorker(loaded.codec, torch.device("cuda", 0))  # no CUDA here: its thread fails at once
    with ThreadPoolExecutor(1) as pool:
        decoding = pool.submit(worker.decode, random_frames(1, 16, seed=12)[0])
        with pytest.raises((RuntimeError, AssertionError)):
            decoding.result(60)
    wait_until(lambda: not worker.alive)


def test_the_model_holder_replaces_a_worker_that_stopped(settings):
    holder = ModelHolder(settings, ModelCache())
    frames = random_frames(1, 24, seed=13)[0]
    holder.decode(frames)
    stopped = holder._codec
    stopped.close()  # as a worker whose loop broke is: closed, its thread ended
    assert holder.decode(frames).shape == (24 * 960,)
    assert holder._codec is not stopped and holder._codec.alive
    holder.unload()


def test_the_model_holder_decodes_through_one_worker_and_unload_ends_it(settings):
    holder = ModelHolder(settings, ModelCache())
    frames = random_frames(1, 24, seed=9)[0]
    audio = holder.decode(frames)
    worker = holder._codec
    assert worker is not None and worker.alive
    assert np.abs(audio - alone(holder.model()[0], frames)).max() <= TOLERANCE
    assert holder.decode(frames[:0]).shape == (0,)
    assert holder.codec_stats() == (1, 1, 0)
    holder.unload()
    assert not worker.alive and holder._codec is None
    assert holder.decode(frames).shape == (24 * 960,)  # loads again, with a new worker
    assert holder.codec_stats() == (2, 2, 0)
    holder.unload()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the worker's own CUDA stream needs a GPU")
def test_a_worker_on_cuda_without_an_index_decodes(settings):
    """DEVICE unset picks torch.device("cuda"), with no index: the worker's thread must still start."""
    import dataclasses

    loaded = ModelCache().get(dataclasses.replace(settings, device="cuda"))[0]
    worker = CodecWorker(loaded.codec, torch.device("cuda"))
    try:
        with ThreadPoolExecutor(1) as pool:
            got = pool.submit(worker.decode, random_frames(1, 16, seed=14)[0]).result(120)
        assert got.shape == (16 * 960,) and worker.alive
    finally:
        worker.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the worker's own CUDA stream needs a GPU")
def test_batched_on_its_own_cuda_stream_equals_alone(settings):
    import dataclasses

    loaded = ModelCache().get(dataclasses.replace(settings, device="cuda"))[0]
    pieces = [piece.to("cuda") for piece in random_frames(4, 56, seed=10)]  # frames written on the caller's stream
    shapes, results, _ = decode_queued(loaded, pieces, max_batch=None)
    assert shapes[1:] == [(4, 8, 56)]
    for piece, got in zip(pieces, results, strict=True):
        assert np.abs(got - alone(loaded, piece)).max() <= 1e-4
