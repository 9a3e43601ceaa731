"""RunPod's wire format over the speech service: stream items and reply shapes, tested bare."""

import base64
import io

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import make_bucket
from service.test_speech import BASE, decoded_audio

from higgs_tts.delivery import runpod
from higgs_tts.delivery.runpod import runpod_reply, stream_items


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
    assert service.synthesizer.engine_load() == (0, 0, 0)
