"""OpenAI's speech API: `POST /v1/audio/speech`, the model and voice lists."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, create_model

from ..core.audio import MAX_SPEED, MIN_SPEED, SAMPLE_RATE
from ..service import formats
from ..service.audit import AuditRecord
from ..service.errors import Failure
from ..service.events import Audio, ChunkEnd, Done
from ..service.outcome import Outcome
from ..service.schema import GenerateInput, OutputFormat, parse_input
from ..service.speech import SpeechService
from .aliases import VoiceAliases
from .disconnect import CancellingStream, run_while_connected
from .metrics import Metrics
from .middleware import failure_response, in_request_names, openai_error

log = logging.getLogger(__name__)

# The model names metrics count by name; any other `model` a caller sends counts as "other", so a
# caller cannot grow the label set (and /metrics) without bound.
MODEL_NAMES = ("higgs-audio-v2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")


def model_label(model: str) -> str:
    return model if model in MODEL_NAMES else "other"


# The job fields /v1/audio/speech spells OpenAI's way, and those that belong to RunPod jobs only.
OPENAI_NAMES = {"transcript": "input", "ref_audio": "voice", "output_format": "response_format"}
JOB_ONLY = {"action", "s3_bucket", "s3_key", "stream"}
# Fields that known clients add: accepted, and ignored but for `stream` (docs/api.md, "HTTP server").
CLIENT_EXTRAS = {
    "stream": "Kokoro-FastAPI's; false: the whole file when it is done (lengths in its header)",
    "backend": "LibreChat's (for LocalAI); ignored",
    "lang_code": "Kokoro-FastAPI's; ignored: the model reads the language from the text",
}


VOICE_HELP = "a library voice, OpenAI's name (alias) or several: 'a,b'; or OpenAI's object form {\"id\": name}"


def _voice_by_id(value):
    """OpenAI's object form of `voice` (`{"id": "voice_1234"}`, for its custom voices) is taken as the
    name in `id`, which the string form would give."""
    if isinstance(value, dict):
        if set(value) != {"id"} or not isinstance(value["id"], str):
            raise ValueError('an object voice is {"id": "<voice name>"} and nothing else')
        return value["id"]
    return value


Voice = Annotated[
    str | None,
    BeforeValidator(_voice_by_id),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "null"}, {
        "type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"],
        "additionalProperties": False}], "description": VOICE_HELP}),
]


class _OpenAIFields(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body; the job's generation fields are added as extensions."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field("higgs-audio-v2", max_length=100)
    input: str = Field(description="the text to speak (long texts are chunked by sentences)")
    voice: Voice = None
    response_format: OutputFormat = "mp3"
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    instructions: str | None = Field(None, description="the scene prompt")
    stream_format: Literal["audio", "sse"] = "audio"
    stream: bool | None = Field(None, description=CLIENT_EXTRAS["stream"])
    backend: str | None = Field(None, max_length=100, description=CLIENT_EXTRAS["backend"])
    lang_code: str | None = Field(None, max_length=20, description=CLIENT_EXTRAS["lang_code"])


# Every other generation field of the job schema, under its own name: sampling, chunking, seed,
# scene_prompt, the reference clip; a field added to GenerateInput is accepted here unedited.
EXTENSIONS = {name: (info.annotation, info) for name, info in GenerateInput.model_fields.items()
              if name not in OPENAI_NAMES and name not in JOB_ONLY and name not in _OpenAIFields.model_fields}
SpeechRequest = create_model("SpeechRequest", __base__=_OpenAIFields, __module__=__name__, **EXTENSIONS)


def _model_list() -> list[dict]:
    return [{"id": name, "object": "model", "created": 0, "owned_by": "higgs-tts"} for name in MODEL_NAMES]


def router(service: SpeechService, metrics: Metrics, aliases: VoiceAliases | None = None) -> APIRouter:
    api = APIRouter()
    aliases = aliases or VoiceAliases.load()

    def library() -> dict[str, dict]:
        return {v["name"]: v for v in service.list_voices()["voices"]}

    @api.get("/v1/voices")
    def voices():
        return {"voices": service.list_voices()["voices"]}

    @api.get("/v1/models")
    def models():
        return {"object": "list", "data": _model_list()}

    @api.get("/v1/audio/models")
    def audio_models():  # OpenAI's list, plus Open WebUI's `models`
        return {"object": "list", "data": _model_list(), "models": [{"id": n, "name": n} for n in MODEL_NAMES]}

    @api.get("/v1/audio/voices")
    def audio_voices():
        """Library voices, then OpenAI's names that map to one (Open WebUI reads `voices[].id`)."""
        known = library()
        listed = [{"id": name, **voice} for name, voice in known.items()]
        for alias, target in aliases.mapping.items():
            if alias not in known and all(t in known for t in target.split(",")):
                description = "; ".join(f"{t}: {known[t]['description']}" for t in target.split(","))
                listed.append({"id": alias, "name": alias, "kind": "alias", "description": description,
                               "voice": target})
        return {"voices": listed}

    # The body is read by hand (strict, errors in OpenAI's shape), and declared here for /docs.
    body_schema = {"required": True, "content": {"application/json": {"schema": SpeechRequest.model_json_schema()}}}

    @api.post("/v1/audio/speech", openapi_extra={"requestBody": body_schema})
    async def speech(request: Request):
        started = time.perf_counter()
        try:
            body = SpeechRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or "body"
            Outcome(metrics=metrics, endpoint="speech", started=started).counted(400, "invalid_input")
            message = error["msg"].removeprefix("Value error, ")  # a validator's own words, as the job's errors
            return openai_error(400, f"{field}: {message}", "invalid_input", field)
        names = dict(OPENAI_NAMES)
        raw = {"transcript": body.input, "output_format": body.response_format, "speed": body.speed}
        raw.update({name: getattr(body, name) for name in EXTENSIONS if name in body.model_fields_set})
        if body.instructions is not None:
            if "scene_prompt" in body.model_fields_set:
                return openai_error(400, "instructions: give instructions or scene_prompt, not both",
                                    "invalid_input", "instructions")
            raw["scene_prompt"], names["scene_prompt"] = body.instructions, "instructions"
        if body.voice is not None and body.voice.strip():
            raw["ref_audio"] = aliases.resolve(body.voice, set(library()))
        streamable = body.speed == 1.0 and body.stream is not False and formats.streams(body.response_format)
        audit = AuditRecord(job_id=f"http-{uuid.uuid4().hex[:12]}", raw=raw)
        outcome = Outcome(audit, metrics, "speech", started, model_label(body.model))
        cancel = threading.Event()  # set when the client disconnects: generation stops at its next step
        try:
            request_input = parse_input(raw)
            if streamable:  # audio goes out while it is generated
                items = await anyio.to_thread.run_sync(service.open_stream, request_input, cancel)
                first = await run_while_connected(request, cancel, _next_item, items)
                return _streaming_reply(items, first, body, outcome, cancel)
            rendered = await run_while_connected(request, cancel, service.render, request_input, cancel)
        except Exception as exc:  # every failure becomes an error body, never a traceback
            failure = in_request_names(service.describe_failure(exc, audit.job_id), names)
            outcome.failed(failure)
            outcome.emit()
            return failure_response(failure)

        result = rendered.result
        ready = time.perf_counter() - started
        outcome.first_audio()
        outcome.ok(result, "http")
        outcome.emit(ready)
        headers = result_headers(result)
        if body.stream_format == "sse":
            events = _sse(formats.pieces(rendered.data, 48 * 1024), len(body.input), lambda: result.num_frames)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        return StreamingResponse(formats.pieces(rendered.data, 64 * 1024), media_type=rendered.content_type,
                                 headers=headers)

    return api


# What a whole (not streamed) speech response says about its audio, beside the body; browsers are
# allowed to read them (delivery/app.py's CORS expose_headers).
RESULT_HEADERS = {
    "X-Audio-Duration": lambda r: f"{r.duration_seconds:.3f}",
    "X-Seed": lambda r: str(r.seed),
    "X-Generation-Time": lambda r: f"{r.generation_seconds:.3f}",
    "X-Text-Chunks": lambda r: str(len(r.chunks)),
    "X-Chunks-Cut": lambda r: str(len(r.cut_chunks)),  # chunks that max_new_tokens ended early
}


def result_headers(result) -> dict[str, str]:
    return {name: value(result) for name, value in RESULT_HEADERS.items()}


def _next_item(items):
    """The first audio (or the end), so that failures before any audio still become error replies."""
    while isinstance(item := next(items), ChunkEnd):
        pass
    return item


def _streaming_reply(items, first, body: SpeechRequest, outcome: Outcome, cancel: threading.Event):
    """Chunked audio in the response format (or SSE deltas of it) from a running synthesis."""
    frames = [0]  # audio frames generated, known once the result arrives

    def audio_bytes():
        item = first
        encoder = formats.StreamEncoder(body.response_format, SAMPLE_RATE)
        try:
            while True:
                match item:
                    case Audio(samples):
                        if item is first:
                            outcome.first_audio()
                        if data := encoder.push(samples):
                            yield data
                    case ChunkEnd():
                        pass
                    case Done(result):
                        if data := encoder.finish():
                            yield data
                        frames[0] = result.num_frames
                        outcome.ok(result, "http-stream")
                        return
                item = next(items)
        except StopIteration:
            return
        except GeneratorExit:  # closed mid-stream: the client went away between two chunks
            outcome.failed(Failure("the client went away", "cancelled"))
            raise
        except Exception as exc:  # headers are gone: log, and end the stream early
            failure = SpeechService.describe_failure(exc, outcome.audit.job_id)
            outcome.failed(failure)  # 409 cancelled: the client went away
            log.warning("stream %s ended early: %s", outcome.audit.job_id, failure.message)
        finally:
            encoder.close()
            outcome.emit()
            items.close()

    if body.stream_format == "sse":
        return CancellingStream(_sse(audio_bytes(), len(body.input), lambda: frames[0]), cancel,
                                media_type="text/event-stream")
    return CancellingStream(audio_bytes(), cancel, media_type=formats.content_type(body.response_format))


def _sse(chunks, input_tokens: int, output_tokens):
    """OpenAI's speech SSE events: audio deltas, then a done event whose usage counts the input's
    characters and the audio frames (`output_tokens()` is read after the last chunk)."""
    try:
        for chunk in chunks:
            yield f"data: {json.dumps({'type': 'speech.audio.delta', 'audio': base64.b64encode(chunk).decode()})}\n\n"
    finally:  # closed early (the client left): close the audio generator too, which audits the job
        if close := getattr(chunks, "close", None):
            close()
    produced = output_tokens()
    usage = {"input_tokens": input_tokens, "output_tokens": produced, "total_tokens": input_tokens + produced}
    yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n"


