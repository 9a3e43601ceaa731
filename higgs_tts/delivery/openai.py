"""OpenAI's speech API: `POST /v1/audio/speech` and the voice list."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from typing import Literal

import anyio
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.audio import SAMPLE_RATE
from ..service import formats
from ..service.audit import AuditRecord
from ..service.schema import OutputFormat, parse_input
from ..service.speech import SpeechService
from .metrics import Metrics
from .middleware import failure_response, openai_error

log = logging.getLogger(__name__)

# The model names metrics count by name; any other `model` a caller sends counts as "other", so a
# caller cannot grow the label set (and /metrics) without bound.
MODEL_NAMES = ("higgs-audio-v2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")


def model_label(model: str) -> str:
    return model if model in MODEL_NAMES else "other"


class SpeechRequest(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body (plus the seed, which OpenAI lacks).

    `stream_format: "sse"` sends OpenAI's event shape; the events follow generation of the whole
    clip (incremental decoding is not built yet).
    """

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field("higgs-audio-v2", max_length=100)
    input: str
    voice: str | None = None
    response_format: OutputFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] = "audio"
    seed: int | None = None



def router(service: SpeechService, metrics: Metrics) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/voices")
    def voices():
        return {"voices": service.list_voices()["voices"]}

    @api.post("/v1/audio/speech")
    async def speech(request: Request):
        started = time.perf_counter()
        try:
            body = SpeechRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or "body"
            metrics.observe("speech", started, 400, code="invalid_input")
            return openai_error(400, f"{field}: {error['msg']}", "invalid_input", field)
        raw = {"transcript": body.input, "output_format": body.response_format, "speed": body.speed}
        streamable = body.speed == 1.0 and formats.streams(body.response_format)
        for key, value in (("ref_audio", body.voice), ("scene_prompt", body.instructions), ("seed", body.seed)):
            if value is not None:
                raw[key] = value
        audit = AuditRecord(job_id=f"http-{uuid.uuid4().hex[:12]}", raw=raw)
        try:
            request_input = parse_input(raw)
            if streamable:  # audio goes out while it is generated
                items = await anyio.to_thread.run_sync(service.open_stream, request_input)
                first = await anyio.to_thread.run_sync(_next_item, items)
                return _streaming_reply(items, first, body, started, audit, metrics)
            rendered = await anyio.to_thread.run_sync(service.render, request_input)
        except Exception as exc:  # every failure becomes an error body, never a traceback
            failure = service.describe_failure(exc, audit.job_id)
            audit.fail(failure.code)
            audit.emit(time.perf_counter() - started)
            metrics.observe("speech", started, failure.status, model_label(body.model), failure.code)
            return failure_response(failure)

        result = rendered.result
        ready = time.perf_counter() - started
        metrics.first_audio.observe(ready)
        metrics.record(result)
        audit.status = "ok"
        audit.facts.update(audio_duration=round(result.duration_seconds, 3), delivery="http")
        audit.emit(ready)
        metrics.observe("speech", started, 200, model_label(body.model))
        headers = {
            "X-Audio-Duration": f"{result.duration_seconds:.3f}",
            "X-Seed": str(result.seed),
            "X-Generation-Time": f"{result.generation_seconds:.3f}",
        }
        if body.stream_format == "sse":
            events = _sse(formats.pieces(rendered.data, 48 * 1024), len(body.input), lambda: result.num_frames)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        return StreamingResponse(formats.pieces(rendered.data, 64 * 1024), media_type=rendered.content_type,
                                 headers=headers)

    return api


def _next_item(items):
    """The first item, so that failures before any audio still become error replies."""
    return next(items)


def _streaming_reply(items, first, body: SpeechRequest, started: float, audit, metrics: Metrics):
    """Chunked PCM/WAV (or SSE deltas of it) from a running synthesis."""

    def observe(status: int, code: str | None = None) -> None:
        metrics.observe("speech", started, status, model_label(body.model), code)
    frames = [0]  # audio frames generated, known once the result arrives

    def audio_bytes():
        item = first
        if body.response_format == "wav":
            yield formats.wav_stream_header(SAMPLE_RATE)
        try:
            while True:
                if isinstance(item, np.ndarray):
                    if item is first:
                        metrics.first_audio.observe(time.perf_counter() - started)
                    yield formats.to_pcm16(item)
                else:
                    frames[0] = item.num_frames
                    metrics.record(item)
                    audit.status = "ok"
                    audit.facts.update(audio_duration=round(item.duration_seconds, 3), delivery="http-stream")
                    observe(200)
                    return
                item = next(items)
        except StopIteration:
            return
        except Exception as exc:  # headers are gone: log, and end the stream early
            failure = SpeechService.describe_failure(exc, audit.job_id)
            audit.fail(failure.code)
            observe(500, failure.code)
            log.warning("stream %s ended early: %s", audit.job_id, failure.message)
        finally:
            audit.emit(time.perf_counter() - started)
            items.close()

    if body.stream_format == "sse":
        return StreamingResponse(_sse(audio_bytes(), len(body.input), lambda: frames[0]),
                                 media_type="text/event-stream")
    return StreamingResponse(audio_bytes(), media_type=formats.content_type(body.response_format))


def _sse(chunks, input_tokens: int, output_tokens):
    """OpenAI's speech SSE events: audio deltas, then a done event whose usage counts the input's
    characters and the audio frames (`output_tokens()` is read after the last chunk)."""
    for chunk in chunks:
        yield f"data: {json.dumps({'type': 'speech.audio.delta', 'audio': base64.b64encode(chunk).decode()})}\n\n"
    produced = output_tokens()
    usage = {"input_tokens": input_tokens, "output_tokens": produced, "total_tokens": input_tokens + produced}
    yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n"


