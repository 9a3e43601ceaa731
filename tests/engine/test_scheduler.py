"""Continuous batching on the tiny checkpoint: joins, leaves, cancellation and admission control."""

import dataclasses
import threading
import time

import pytest
import torch
from conftest import assert_codes_agree

from higgs_tts.core.checkpoint import load_model
from higgs_tts.core.prompt import PromptRenderer, build_prompt
from higgs_tts.core.sampling import SamplingParams
from higgs_tts.engine.engine import Engine, EngineRequest
from higgs_tts.engine.scheduler import EngineBusy, Scheduler

SAMPLED = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=60)
GREEDY = SamplingParams(temperature=0.0, ras_win_len=0, max_new_tokens=60)


@pytest.fixture(scope="module")
def loaded(settings):
    return load_model(settings)


@pytest.fixture(scope="module")
def requests(loaded):
    renderer = PromptRenderer(loaded.processor)
    texts = ["Hello there.", "A somewhat longer sentence to speak.", "Short.", "Numbers one two three."]
    inputs = [renderer.inputs(build_prompt(t, transcript=t, voices=[], scene="")) for t in texts]
    params = [SAMPLED, GREEDY, dataclasses.replace(SAMPLED, temperature=0.6, max_new_tokens=40), SAMPLED]
    return [EngineRequest(i, p, seed) for seed, (i, p) in enumerate(zip(inputs, params, strict=True))]


def collect(sequence) -> torch.Tensor:
    pieces = list(sequence.pieces())
    return torch.cat(pieces) if pieces else torch.zeros((0, 8), dtype=torch.long)


def test_requests_joining_a_running_batch_get_their_solo_output(loaded, requests):
    solo = Engine(loaded.model)
    alone = [solo.generate([r])[0] for r in requests]
    scheduler = Scheduler(loaded.model, slots=3, max_len=1024, max_waiting=8).start()
    try:
        first = scheduler.submit(requests[0])
        pieces = first.pieces()
        head = next(pieces)  # the batch is running when the others arrive
        others = [scheduler.submit(r) for r in requests[1:]]  # one more than the free slots: it waits
        outputs = [torch.cat([head, *pieces])] + [collect(s) for s in others]
    finally:
        scheduler.close()
    for got, want in zip(outputs, alone, strict=True):
        assert_codes_agree(got, want, loaded.device)


def wait_for(scheduler, load, seconds=30):
    deadline = time.monotonic() + seconds
    while scheduler.load() != load and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.load() == load


def test_cancelling_frees_the_slot(loaded, requests):
    long = dataclasses.replace(requests[0], params=dataclasses.replace(SAMPLED, max_new_tokens=900))
    scheduler = Scheduler(loaded.model, slots=2, max_len=2048, max_waiting=1).start()
    try:
        running = [scheduler.submit(long, ignore_eos=True)]
        wait_for(scheduler, (1, 0))
        running.append(scheduler.submit(long, ignore_eos=True))
        wait_for(scheduler, (2, 0))
        waiting = scheduler.submit(requests[2])
        reader = running[0].pieces()
        next(reader)  # both slots are generating
        assert scheduler.load() == (2, 1)
        reader.close()  # the reader goes away: its slot frees at the next burst
        result = collect(waiting)
        assert result.shape[0] > 0
        assert running[1].generated < 900  # the waiting request did not wait for the long ones to end
        running[1].cancel()
        wait_for(scheduler, (0, 0))
    finally:
        scheduler.close()


def test_admission_is_per_request_and_bounded(loaded, requests):
    scheduler = Scheduler(loaded.model, slots=1, max_len=1024, max_waiting=1).start()
    try:
        with scheduler.request(), scheduler.request():
            with pytest.raises(EngineBusy, match="busy"):
                with scheduler.request():
                    pass
            # an admitted request's later chunks are never refused, however many there are
            outputs = [collect(scheduler.submit(requests[i % 4])) for i in range(3)]
            assert all(o.shape[0] > 0 for o in outputs)
        with scheduler.request():  # places are given back when requests end
            pass
    finally:
        scheduler.close()


def test_too_long_and_closed(loaded, requests):
    scheduler = Scheduler(loaded.model, slots=1, max_len=512, max_waiting=1).start()
    too_long = dataclasses.replace(requests[0], params=dataclasses.replace(SAMPLED, max_new_tokens=600))
    assert not scheduler.fits(too_long)
    with pytest.raises(ValueError, match="ENGINE_MAX_LEN"):
        scheduler.submit(too_long)
    scheduler.close()
    with pytest.raises(RuntimeError, match="stopped"):
        scheduler.submit(requests[0])


def test_many_threads_at_once(loaded, requests):
    solo = Engine(loaded.model)
    jobs = [dataclasses.replace(requests[i % 4], seed=100 + i) for i in range(12)]
    alone = [solo.generate([j])[0] for j in jobs]
    scheduler = Scheduler(loaded.model, slots=4, max_len=1024, max_waiting=12).start()
    results: dict[int, torch.Tensor] = {}

    def run(index: int) -> None:
        results[index] = collect(scheduler.submit(jobs[index]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        scheduler.close()
    assert sorted(results) == list(range(len(jobs)))
    for index, want in enumerate(alone):
        assert_codes_agree(results[index], want, loaded.device)


@pytest.mark.parametrize("pipelined", [False, True])
def test_double_buffered_bursts_hand_out_the_same_codes(loaded, requests, pipelined):
    """Burst n+1 launched before burst n is read (CUDA's default; forced here on any device): the
    same columns reach each sequence, and slots freed a burst late are reused correctly."""
    alone = [Engine(loaded.model).generate([r])[0] for r in requests]
    scheduler = Scheduler(loaded.model, slots=2, max_len=1024, max_waiting=8, pipelined=pipelined).start()
    try:
        sequences = [scheduler.submit(r) for r in requests]  # four requests through two slots
        outputs = [collect(s) for s in sequences]
    finally:
        scheduler.close()
    for got, want in zip(outputs, alone, strict=True):
        assert_codes_agree(got, want, loaded.device)


def drive(scheduler: Scheduler, sequences: list) -> list[torch.Tensor]:
    """Run the scheduler in this thread until every sequence has ended; their columns."""
    pieces: list[list[torch.Tensor]] = [[] for _ in sequences]
    while not scheduler.idle:
        scheduler.step()
        for index, sequence in enumerate(sequences):
            pieces[index].extend(sequence.ready())
    return [torch.cat(p) for p in pieces]


def test_a_packed_prefill_gives_greedy_codes_equal_to_each_alone(loaded, requests):
    greedy = [dataclasses.replace(r, params=GREEDY) for r in requests]
    alone = [Engine(loaded.model).generate([r])[0] for r in greedy]
    scheduler = Scheduler(loaded.model, slots=4, max_len=1024, prefill_pack_tokens=4096)  # packing on, any device
    sequences = [scheduler.submit(r) for r in greedy]
    scheduler.admit()
    assert len(scheduler.batch.sequences) == 4
    assert scheduler.batch.runner.prefilled_tokens == sum(s.prompt_len for s in sequences)  # one prefill for all
    for got, want in zip(drive(scheduler, sequences), alone, strict=True):
        assert_codes_agree(got, want, loaded.device)


def test_a_pack_whose_one_prompt_fails_admits_the_others(loaded, requests):
    broken = dict(requests[1].inputs)
    broken["input_ids"] = broken["input_ids"].clone()
    broken["input_ids"][0, 3] = loaded.model.model.embed_tokens.num_embeddings + 7  # no such token: the embedding fails
    jobs = [requests[0], dataclasses.replace(requests[1], inputs=broken), requests[2]]
    alone = [Engine(loaded.model).generate([r])[0] for r in (jobs[0], jobs[2])]
    scheduler = Scheduler(loaded.model, slots=3, max_len=1024, prefill_pack_tokens=4096)
    sequences = [scheduler.submit(r) for r in jobs]
    scheduler.admit()
    assert sorted(s.request.seed for s in scheduler.batch.sequences.values()) == [0, 2]
    with pytest.raises(IndexError):
        list(sequences[1].pieces())
    outputs = drive(scheduler, [sequences[0], sequences[2]])
    for got, want in zip(outputs, alone, strict=True):
        assert_codes_agree(got, want, loaded.device)
