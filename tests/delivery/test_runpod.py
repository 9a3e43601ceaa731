"""RunPod's wire format over the speech service: stream items and reply shapes, tested bare."""

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import make_bucket
from service.test_speech import BASE, decoded_audio

from higgs_tts.delivery import runpod
from higgs_tts.delivery.runpod import progress_payload, runpod_reply, stream_items


def pcm_of(items) -> np.ndarray:
    data = b"".join(base64.b64decode(i["audio_base64"]) for i in items if i["type"] == "audio")
    return np.frombuffer(data, dtype="<i2")


def test_stream_sends_audio_items_then_the_final_response(service, monkeypatch):
    monkeypatch.setattr(runpod, "STREAM_ITEM_SECONDS", 0.05)  # forces long pieces to be split
    job = {"transcript": "Streamed to the caller.", "ref_audio": "belinda", **BASE}
    items = list(stream_items(service, {**job, "stream": True}, "job-s"))
    audio, final = items[:-1], items[-1]
    assert len(audio) >= 2 and all(i["type"] == "audio" and i["format"] == "pcm" for i in audio)
    assert [i["seq"] for i in items] == list(range(len(items)))
    assert all(i["num_samples"] <= 0.05 * 24000 and len(i["audio_base64"]) < 1_000_000 for i in audio)
    starts = np.cumsum([0] + [i["num_samples"] for i in audio[:-1]]) / 24000
    assert [i["start_seconds"] for i in audio] == pytest.approx(starts, abs=1e-3)

    assert final["success"] is True and final["type"] == "final" and final["audio_items"] == len(audio)
    assert "audio_base64" not in final and final["metadata"]["voice_clone"] == "belinda"
    streamed = pcm_of(items)
    assert final["duration_seconds"] == pytest.approx(len(streamed) / 24000, abs=1e-3)
    metrics = final["generation_metrics"]
    assert 0 < metrics["time_to_first_audio"] <= metrics["total_request_time"]

    whole, _ = decoded_audio(service.handle(job))
    assert len(streamed) == len(whole)
    assert np.abs(streamed / 32767.0 - whole).max() < 2e-4  # the decoder's stated 1e-4, plus rounding


@pytest.mark.slow  # a subprocess
def test_stream_uploads_the_whole_clip_when_a_bucket_is_set(service, s3_env):
    make_bucket(s3_env, "stream-out")
    items = list(stream_items(service, {"transcript": "Stream and keep.", "stream": True, "s3_bucket": "stream-out",
                                     "s3_key": "s/one.wav", **BASE}))
    final = items[-1]
    assert final["audio_url"] == "s3://stream-out/s/one.wav" and "audio_base64" not in final
    stored, rate = sf.read(io.BytesIO(httpx.get(final["presigned_url"]).content), dtype="int16")
    assert rate == 24000 and np.array_equal(stored, pcm_of(items))


def test_stream_failure_ends_with_an_error_item(service):
    items = list(stream_items(service, {"transcript": "Too fast.", "stream": True, "speed": 2.0, **BASE}))
    assert len(items) == 1 and items[0]["type"] == "error" and items[0]["success"] is False
    assert items[0]["error_field"] == "speed"
    unknown = list(stream_items(service, {"transcript": "Who?", "stream": True, "ref_audio": "nobody", **BASE}))
    assert unknown[-1]["error_code"] == "unknown_voice"


def test_jobs_without_stream_yield_their_one_response(service):
    items = list(stream_items(service, {"action": "health"}))
    assert len(items) == 1 and items[0]["status"] == "healthy"
    whole = list(stream_items(service, {"transcript": "Whole.", **BASE}))
    assert len(whole) == 1 and decoded_audio(whole[0])[1] == 24000
    assert whole[0]["generation_metrics"]["time_to_first_audio"] > 0


def test_runpod_reply_fails_the_job_when_the_last_item_failed():
    assert runpod_reply("j", {"success": True})["status"] == "COMPLETED"
    failed = runpod_reply("j", [{"type": "audio"}, {"success": False, "error": "boom"}])
    assert failed["status"] == "FAILED" and failed["error"] == "boom" and len(failed["output"]) == 2


def test_a_cancelled_streaming_job_frees_its_slot_and_the_idle_count(service):
    import asyncio

    from higgs_tts.delivery.runpod import Worker

    worker = Worker(service)
    job = {"id": "s-1", "input": {"transcript": "One. Two. Three. Four.", "stream": True, "chunk_method": "sentence",
                                  "chunk_max_word_num": 1, **BASE}}

    async def cancel_after_the_first_item():
        got = asyncio.Event()

        async def consume():
            async for _ in worker.streaming_handler(job):
                got.set()

        task = asyncio.create_task(consume())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_after_the_first_item())
    assert worker.cleaner._active == 0  # idle cleanup and unload can run again
    deadline = time.monotonic() + 30  # the engine thread lets the slot go at its next burst
    while service.synthesizer.engine_load() != (0, 0, 0):
        assert time.monotonic() < deadline, service.synthesizer.engine_load()
        time.sleep(0.01)


def test_a_whole_response_too_large_for_one_stream_item_is_split_into_parts(service):
    from higgs_tts.client import job_output
    from higgs_tts.delivery.runpod import STREAM_ITEM_BYTES, whole_items

    response = service.handle({"transcript": "Whole.", **BASE})
    small = list(whole_items(response))
    assert small == [response]  # it fits: unchanged
    audio = base64.b64encode(np.random.default_rng(0).bytes(2_500_000)).decode()  # 3.3 MB as base64
    items = list(whole_items({**response, "audio_base64": audio}))
    assert all(len(json.dumps(i)) < STREAM_ITEM_BYTES for i in items)
    parts, last = items[:-1], items[-1]
    assert len(parts) >= 4 and all(p["type"] == "audio_part" and p["parts"] == len(parts) for p in parts)
    assert [p["seq"] for p in parts] == list(range(len(parts)))
    assert "audio_base64" not in last and last["audio_parts"] == len(parts) and last["success"] is True
    assert job_output(items)["audio_base64"] == audio  # the client joins them back


def test_progress_payload_says_chunks_and_seconds():
    payload = progress_payload(2, 5, 12.3456)
    assert payload == {"type": "progress", "chunks_done": 2, "chunks_total": 5, "audio_seconds": 12.346,
                       "message": "chunk 2 of 5 done, 12.3 s of audio"}


def _platform():
    from higgs_tts.delivery.runpod import Platform

    updates, streamed = [], []

    async def send_stream_item(job, item):
        streamed.append((job, item))

    return Platform(progress_update=lambda job, payload: updates.append((job, payload)),
                    send_stream_item=send_stream_item), updates, streamed


def test_a_long_job_reports_progress_after_each_chunk_with_the_sdk_job(service):
    import asyncio

    from higgs_tts.delivery.runpod import Worker

    platform, updates, _ = _platform()
    worker = Worker(service, platform)
    job = {"id": "long-1", "input": {"transcript": " ".join(f"Word{i}" for i in range(30)) + ".",
                                     "chunk_method": "word", "chunk_max_word_num": 10, **BASE}}
    response = asyncio.run(worker.handler(job))
    assert response["success"] is True and response["generation_metrics"]["chunks_processed"] == 3
    assert all(sent is job for sent, _ in updates)  # the SDK's job object, as progress_update needs
    payloads = [payload for _, payload in updates]
    assert [(p["chunks_done"], p["chunks_total"]) for p in payloads] == [(1, 3), (2, 3), (3, 3)]
    seconds = [p["audio_seconds"] for p in payloads]
    assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(response["duration_seconds"], abs=1e-3)


def test_on_runpod_an_error_item_is_sent_to_stream_before_the_sdk_ends_the_job(service):
    import asyncio

    from higgs_tts.delivery.runpod import Worker

    platform, _, streamed = _platform()
    worker = Worker(service, platform)
    job = {"id": "bad-1", "input": {"transcript": "Who?", "stream": True, "ref_audio": "nobody", **BASE}}

    async def collect():
        return [item async for item in worker.streaming_handler(job)]

    items = asyncio.run(collect())
    assert items[-1]["type"] == "error" and items[-1]["error_code"] == "unknown_voice"
    assert streamed == [(job, items[-1])]  # on /stream with its code, though the SDK drops what it yields
