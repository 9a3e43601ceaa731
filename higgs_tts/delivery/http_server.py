"""HTTP API for use outside RunPod: OpenAI-style speech, the RunPod job contract, health, metrics.

    higgs-tts serve --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.middleware.base import BaseHTTPMiddleware

from ..core.audio import SAMPLE_RATE
from ..service import formats
from ..service.audit import AuditRecord
from ..service.schema import parse_input
from ..service.speech import Failure, SpeechService
from .metrics import Metrics

log = logging.getLogger(__name__)

# error code -> HTTP status
STATUS = {"invalid_input": 400, "unknown_voice": 400, "too_long": 400, "too_large": 413, "voice_exists": 409,
          "result_too_large": 413, "out_of_memory": 503, "model_unavailable": 503, "busy": 503, "cancelled": 409,
          "storage_error": 500, "internal_error": 500}
MAX_JOBS_KEPT = 1000


class SpeechRequest(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body (plus the seed, which OpenAI lacks).

    `stream_format: "sse"` sends OpenAI's event shape; the events follow generation of the whole
    clip (incremental decoding is not built yet).
    """

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field("higgs-audio-v2", max_length=100)
    input: str
    voice: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] = "audio"
    seed: int | None = None


class RunRequest(BaseModel):
    input: dict
    webhook: str | None = None


def openai_error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def failure_response(failure: Failure) -> JSONResponse:
    return openai_error(STATUS.get(failure.code, 500), failure.message, failure.code, failure.field)


class BodyLimit(BaseHTTPMiddleware):
    """Refuse bodies above the limit before reading them (413, OpenAI error body)."""

    def __init__(self, app, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def dispatch(self, request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return openai_error(413, f"request body is above the limit of {self.max_bytes} bytes", "too_large")
        if length is None and request.method in ("POST", "PUT"):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.max_bytes:
                    return openai_error(413, f"request body is above the limit of {self.max_bytes} bytes",
                                        "too_large")
            request._body = body  # starlette reuses it for the endpoint
        return await call_next(request)


class BearerAuth(BaseHTTPMiddleware):
    """With an API key set, every route but /health needs `Authorization: Bearer <key>`."""

    def __init__(self, app, api_key: str) -> None:
        super().__init__(app)
        self.api_key = api_key.encode()

    async def dispatch(self, request: Request, call_next):
        if request.url.path != "/health":
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key):
                return openai_error(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                                    "invalid_api_key")
        return await call_next(request)


class Jobs:
    """RunPod-style asynchronous jobs, kept in memory (the newest MAX_JOBS_KEPT).

    A job with `stream: true` collects its items as they are produced; `/stream/{id}` hands out
    the ones not read yet, as RunPod's endpoint does.
    """

    def __init__(self, service: SpeechService, workers: int) -> None:
        self.service = service
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="job")
        self.lock = threading.Lock()
        self.jobs: OrderedDict[str, dict] = OrderedDict()
        self.streams: dict[str, list] = {}  # job id -> [items, number read]
        self.cancels: dict[str, threading.Event] = {}

    def submit(self, job_input: dict) -> str:
        job_id = f"job-{uuid.uuid4()}"
        with self.lock:
            self.jobs[job_id] = {"id": job_id, "status": "IN_QUEUE"}
            self.cancels[job_id] = threading.Event()
            while len(self.jobs) > MAX_JOBS_KEPT:
                oldest = self.jobs.popitem(last=False)[0]
                self.streams.pop(oldest, None)
                self.cancels.pop(oldest, None)
        self.pool.submit(self._run, job_id, job_input)
        return job_id

    def cancel(self, job_id: str) -> dict | None:
        """RunPod's /cancel: a queued job never runs; a running one stops within one engine burst."""
        with self.lock:
            job, event = self.jobs.get(job_id), self.cancels.get(job_id)
            if job is None or event is None:
                return None
            event.set()
            if job["status"] in ("IN_QUEUE", "IN_PROGRESS"):
                job["status"] = "CANCELLED"
            return {"id": job_id, "status": job["status"]}

    def _run(self, job_id: str, job_input: dict) -> None:
        cancel = self.cancels.get(job_id) or threading.Event()
        if cancel.is_set():
            return
        try:
            self._set(job_id, status="IN_PROGRESS")
            self._execute(job_id, job_input, cancel)
        except Exception as exc:  # never leave a job IN_PROGRESS forever
            log.exception("job %s crashed", job_id)
            self._set(job_id, status="FAILED", error=f"internal error ({type(exc).__name__})")

    def _execute(self, job_id: str, job_input: dict, cancel: threading.Event) -> None:
        if not (isinstance(job_input, dict) and job_input.get("stream") is True):
            reply = runpod_reply(job_id, self.service.handle(job_input, job_id, cancel=cancel))
            self._set(job_id, **(reply if not cancel.is_set() else {**reply, "status": "CANCELLED"}))
            return
        items: list[dict] = []  # read by /stream/{id} while they come
        with self.lock:
            self.streams[job_id] = [items, 0]
        stream = self.service.stream_job(job_input, job_id)
        for item in stream:
            if cancel.is_set():  # closing the stream gives the engine slot back
                stream.close()
                return
            with self.lock:
                items.append(item)
        self._set(job_id, **runpod_reply(job_id, list(items)))

    def _set(self, job_id: str, **fields) -> None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None and not (job["status"] == "CANCELLED" and fields.get("status") == "IN_PROGRESS"):
                job.update(fields)

    def get(self, job_id: str) -> dict | None:
        with self.lock:
            job = self.jobs.get(job_id)
            return dict(job) if job else None

    def read_stream(self, job_id: str) -> dict | None:
        """The job's status and the stream items produced since the last read."""
        with self.lock:
            job, stream = self.jobs.get(job_id), self.streams.get(job_id)
            if job is None:
                return None
            if stream is None:
                return {"id": job_id, "status": job["status"], "stream": []}
            items, read = stream
            stream[1] = len(items)
            reply = {"id": job_id, "status": job["status"], "stream": [{"output": i} for i in items[read:]]}
            if job.get("error"):
                reply["error"] = job["error"]
            return reply


def runpod_reply(job_id: str, output: dict | list[dict]) -> dict:
    """The RunPod shape: FAILED with a top-level `error` when the output says success false. A
    stream job's output is the list of its items, as RunPod aggregates it; the last one says how
    the job ended."""
    last = output[-1] if isinstance(output, list) else output
    if last.get("success") is False:
        return {"id": job_id, "status": "FAILED", "error": last.get("error"), "output": output}
    return {"id": job_id, "status": "COMPLETED", "output": output}


def create_app(service: SpeechService | None = None, api_key: str | None = None,
               max_body_bytes: int = 20 * 1024 * 1024) -> FastAPI:
    service = service or SpeechService()
    metrics = Metrics(service.synthesizer.engine_load)
    jobs = Jobs(service, service.service.max_concurrency)
    app = FastAPI(title="Higgs Audio V2 TTS", version="0.1.0")
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    def observe(endpoint: str, started: float, status: int, model: str = "", code: str | None = None) -> None:
        metrics.requests.labels(endpoint, model[:64], str(status)).inc()
        metrics.duration.labels(endpoint).observe(time.perf_counter() - started)
        if code:
            metrics.errors.labels(endpoint, code).inc()

    @app.get("/health")
    def health():
        payload = service.health()
        return JSONResponse(status_code=200 if payload["status"] == "healthy" else 503, content=payload)

    @app.get("/v1/voices")
    def voices():
        return {"voices": service.list_voices()["voices"]}

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        started = time.perf_counter()
        try:
            body = SpeechRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or "body"
            observe("speech", started, 400, code="invalid_input")
            return openai_error(400, f"{field}: {error['msg']}", "invalid_input", field)
        raw = {"transcript": body.input, "output_format": body.response_format, "speed": body.speed}
        streamable = body.speed == 1.0 and body.response_format in ("pcm", "wav")
        for key, value in (("ref_audio", body.voice), ("scene_prompt", body.instructions), ("seed", body.seed)):
            if value is not None:
                raw[key] = value
        audit = AuditRecord(job_id=f"http-{uuid.uuid4().hex[:12]}", raw=raw)
        try:
            request_input = parse_input(raw)
            if streamable:  # audio goes out while it is generated
                items = await anyio.to_thread.run_sync(service.open_stream, request_input)
                first = await anyio.to_thread.run_sync(_next_item, items)
                return _streaming_reply(items, first, body, started, audit, metrics,
                                        lambda status, code=None: observe("speech", started, status, body.model, code))
            rendered = await anyio.to_thread.run_sync(service.render, request_input)
        except Exception as exc:  # every failure becomes an error body, never a traceback
            failure = service.describe_failure(exc, audit.job_id)
            audit.fail(failure.code)
            audit.emit(time.perf_counter() - started)
            observe("speech", started, STATUS.get(failure.code, 500), body.model, failure.code)
            return failure_response(failure)

        result = rendered.result
        ready = time.perf_counter() - started
        metrics.first_audio.observe(ready)
        metrics.record(result)
        audit.status = "ok"
        audit.facts.update(audio_duration=round(result.duration_seconds, 3), delivery="http")
        audit.emit(ready)
        observe("speech", started, 200, body.model)
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

    @app.post("/runsync")
    async def runsync(job: RunRequest):
        started = time.perf_counter()
        job_id = f"sync-{uuid.uuid4()}"
        if job.input.get("stream") is True:  # every item at once, as RunPod's /runsync gives a stream job
            output = await anyio.to_thread.run_sync(lambda: list(service.stream_job(job.input, job_id)))
        else:
            output = await anyio.to_thread.run_sync(service.handle, job.input, job_id)
        reply = runpod_reply(job_id, output)
        last = output[-1] if isinstance(output, list) else output
        observe("runsync", started, 200, code=last.get("error_code"))
        return reply

    @app.post("/run")
    def run(job: RunRequest):
        return {"id": jobs.submit(job.input), "status": "IN_QUEUE"}

    @app.api_route("/status/{job_id}", methods=["GET", "POST"])
    def status(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            return openai_error(404, f"no job {job_id!r}", "not_found", "job_id")
        return job

    @app.post("/cancel/{job_id}")
    def cancel(job_id: str):
        reply = jobs.cancel(job_id)
        if reply is None:
            return openai_error(404, f"no job {job_id!r}", "not_found", "job_id")
        return reply

    @app.api_route("/stream/{job_id}", methods=["GET", "POST"])
    def stream(job_id: str):
        reply = jobs.read_stream(job_id)
        if reply is None:
            return openai_error(404, f"no job {job_id!r}", "not_found", "job_id")
        return reply

    return app


def _next_item(items):
    """The first item, so that failures before any audio still become error replies."""
    return next(items)


def _streaming_reply(items, first, body: SpeechRequest, started: float, audit, metrics: Metrics, observe):
    """Chunked PCM/WAV (or SSE deltas of it) from a running synthesis."""
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


def _preload(service: SpeechService) -> None:
    try:
        service.synthesizer.prepare()
    except Exception as exc:  # reported by /health and by the first request instead
        log.warning("model preload failed: %s", exc)


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    import os

    import uvicorn

    api_key = os.environ.get("API_KEY") or None
    max_body = int(os.environ.get("MAX_REQUEST_BYTES", 20 * 1024 * 1024))
    service = SpeechService()
    if os.environ.get("PRELOAD_MODEL", "1").lower() in ("1", "true", "yes"):
        threading.Thread(target=_preload, args=(service,), name="preload", daemon=True).start()
    app = create_app(service, api_key=api_key, max_body_bytes=max_body)
    uvicorn.run(app, host=host, port=port, log_level=os.environ.get("UVICORN_LOG_LEVEL", "info"), access_log=False)
