"""A job is planned and chunked once (synthesis/plan.py), whole or streamed: the service makes the plan
and the synthesizer reads it."""

import numpy as np

from higgs_tts.service.events import Audio, ChunkEnd, Done
from higgs_tts.service.schema import parse_input

BASE = {"max_new_tokens": 40, "seed": 3}


def test_a_job_is_planned_and_chunked_once(service, counted):
    plans, chunkings = counted
    response = service.handle({"transcript": "First part here. Second part here.", "chunk_method": "sentence",
                               "chunk_max_word_num": 3, "ref_audio": "belinda", **BASE})
    assert response["success"], response
    assert response["generation_metrics"]["chunks_processed"] == 2
    assert (plans.calls, chunkings.calls) == (1, 1)


def test_a_streamed_job_is_planned_and_chunked_once(service, counted):
    plans, chunkings = counted
    items = list(service.open_stream(parse_input({"transcript": "Streamed once. And twice.",
                                                  "chunk_method": "sentence", "chunk_max_word_num": 2, **BASE})))
    *events, done = items  # typed: Audio pieces and a ChunkEnd per chunk, then Done with the result
    assert all(isinstance(e, Audio | ChunkEnd) for e in events) and isinstance(done, Done)
    pieces = [e for e in events if isinstance(e, Audio)]
    assert [e.done for e in events if isinstance(e, ChunkEnd)] == [1, 2]
    assert len(done.result.chunks) == 2
    assert np.array_equal(np.concatenate([p.samples for p in pieces]), done.result.audio)
    assert (plans.calls, chunkings.calls) == (1, 1)
