"""Live speech for voice agents: `WS /v1/audio/speech/stream`, text in as it is written, audio out.

JSON text frames (docs/api.md, "Live speech"):
    in:  {"type": "config", ...}  first: voice, response_format, instructions, the generation fields
         {"type": "text", "text": "..."}   {"type": "flush"}   {"type": "cancel"}   {"type": "close"}
    out: {"type": "ready", ...}  {"type": "audio", "seq", "audio" (base64), "start_seconds", "segment"}
         {"type": "segment", "segment", "text", "duration_seconds"}  {"type": "done", ...}
         {"type": "error", "code", "message", "param"}

The session itself (phrases, context, backpressure) is service/live.py; this module is the
socket: the key (header or `?api_key=`, browsers cannot set headers), the frames, the idle
time and the message rate. A reader and a writer run side by side; the writer waits on the
socket, so a slow client slows the session down instead of filling memory.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections import deque

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ..service.audit import AuditRecord
from ..service.errors import STATUS, Failure, InputError
from ..service.live import LiveSession
from ..service.outcome import Outcome
from ..service.speech import SpeechService
from ..settings import ServerSettings
from .aliases import VoiceAliases
from .metrics import Metrics
from .middleware import in_request_names, websocket_authorized

log = logging.getLogger(__name__)

PATH = "/v1/audio/speech/stream"
# Config fields spelled OpenAI's way, as on POST /v1/audio/speech; the others keep the job's names.
CONFIG_NAMES = {"voice": "ref_audio", "response_format": "output_format", "instructions": "scene_prompt"}
MESSAGES = {"text": {"type", "text"}, "flush": {"type"}, "cancel": {"type"}, "close": {"type"}}
# error codes of the socket itself -> the status metrics count them under (the rest: service.errors)
SESSION_STATUS = {"invalid_api_key": 401, "idle_timeout": 408, "rate_limited": 429}
POLL_SECONDS = 0.5  # the writer's wait for the next event between checks that the socket is open
WAITING_THREADS = 10_000  # the writers' waits have threads of their own, not the default pool's 40


def error_frame(code: str, message: str, param: str | None = None) -> dict:
    return {"type": "error", "code": code, "message": message, "param": param}


def job_fields(config: dict, aliases: VoiceAliases, library: set[str]) -> dict:
    """The config frame as the job's generation fields (InputError in the frame's own names)."""
    fields = {k: v for k, v in config.items() if k not in ("type", "model")}
    for public, name in CONFIG_NAMES.items():
        if public in fields:
            if name in fields:
                raise InputError(f"{public}: give {public} or {name}, not both", public)
            fields[name] = fields.pop(public)
    if isinstance(fields.get("ref_audio"), str) and fields["ref_audio"].strip():
        fields["ref_audio"] = aliases.resolve(fields["ref_audio"], library)
    return fields


def public_failure(exc: BaseException) -> dict:
    """An error frame for any failure, in the config's own field names (`voice`, not `ref_audio`)."""
    failure = in_request_names(SpeechService.describe_failure(exc, "live"),
                               {name: spelled for spelled, name in CONFIG_NAMES.items()})
    return error_frame(failure.code, failure.message, failure.field)


class _RateLimit:
    """At most `limit` messages in any one second."""

    def __init__(self, limit: int) -> None:
        self.limit, self.times = limit, deque()

    def allow(self) -> bool:
        now = time.monotonic()
        self.times.append(now)
        while self.times and self.times[0] <= now - 1.0:
            self.times.popleft()
        return len(self.times) <= self.limit


def router(service: SpeechService, metrics: Metrics, server: ServerSettings,
           aliases: VoiceAliases | None = None) -> APIRouter:
    api = APIRouter()
    aliases = aliases or VoiceAliases.load()
    waiters = anyio.CapacityLimiter(WAITING_THREADS)
    open_sessions = [0]  # sessions past the key check, at most LIVE_MAX_SESSIONS

    @api.websocket(PATH)
    async def speech_stream(websocket: WebSocket):
        # the session's audit line (once it is past the key and the session limit) and its count
        outcome = Outcome(metrics=metrics, endpoint="speech_stream")
        await websocket.accept()
        lock = anyio.Lock()  # one frame at a time from the reader and the writer
        ended = {"code": None}  # the error code it ended with, or "done" with the done event

        async def send(frame: dict) -> None:
            async with lock:
                await websocket.send_text(json.dumps(frame))

        async def fail(frame: dict, close_code: int = 1008) -> None:
            ended["code"] = frame["code"]
            try:
                await send(frame)
                await websocket.close(code=close_code, reason=frame["code"])
            except (WebSocketDisconnect, RuntimeError):
                pass

        if server.api_key and not websocket_authorized(websocket, server.api_key):
            await fail(error_frame("invalid_api_key", "missing or wrong API key (send Authorization: Bearer <key> "
                                   "or ?api_key=<key>)"))
            outcome.counted(401, "invalid_api_key")
            return
        if open_sessions[0] >= server.live_max_sessions:
            await fail(error_frame("busy", f"at most {server.live_max_sessions} live sessions at once "
                                   "(LIVE_MAX_SESSIONS); try again shortly"), close_code=1013)
            outcome.counted(STATUS["busy"], "busy")
            return
        open_sessions[0] += 1
        session: LiveSession | None = None
        outcome.audit = AuditRecord(job_id=f"live-{uuid.uuid4().hex[:12]}", action="live")
        try:
            session = await _configure(websocket, service, aliases, server, fail)
            if session is None:
                return
            ready = session.ready()
            outcome.note(output_format=ready["response_format"], voices=",".join(ready["voices"])[:200],
                         delivery="websocket")
            await send(ready)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_write, websocket, session, send, fail, tasks.cancel_scope, ended, outcome, waiters)
                await _read(websocket, session, server, send, fail)
                tasks.cancel_scope.cancel()  # the client left or broke a limit (the writer's `done` cancels _read)
        except WebSocketDisconnect:
            pass  # gone while the ready message was sent
        finally:
            open_sessions[0] -= 1
            if session is not None:
                session.abort()  # gone or done: the worker stops, the engine slot is freed at the next burst
            code, done = ended["code"], ended.get("done")
            if done:
                outcome.spoke(done)
            elif code is None:  # the client went away: a normal end for the socket, `cancelled` in the audit
                outcome.left()
            else:
                outcome.failed(Failure(code, code), SESSION_STATUS.get(code, STATUS.get(code, 500)))
            outcome.emit()

    return api


async def _configure(websocket: WebSocket, service: SpeechService, aliases: VoiceAliases, server: ServerSettings,
                     fail) -> LiveSession | None:
    """The first frame must be the config; the session is made off the event loop (it may load the
    model or fetch a clip). None after an error frame."""
    message = None
    with anyio.move_on_after(server.live_idle_seconds):
        message = await websocket.receive()
    if message is None:
        await fail(error_frame("idle_timeout", f"no config within {server.live_idle_seconds:g} seconds "
                               "(LIVE_IDLE_SECONDS)"))
        return None
    if message["type"] == "websocket.disconnect":
        return None
    frame = _parse(message["text"]) if message.get("text") is not None else "messages must be JSON text frames"
    if isinstance(frame, str):
        await fail(error_frame("invalid_input", frame, "type"))
        return None
    if frame.get("type") != "config":
        await fail(error_frame("invalid_input", "the first message must be {\"type\": \"config\", ...}", "type"))
        return None
    try:
        library = {v["name"] for v in service.list_voices()["voices"]}
        fields = job_fields(frame, aliases, library)
        # not under the idle timeout: a model load may take longer, and the session must not be lost
        return await anyio.to_thread.run_sync(LiveSession, service, fields)
    except Exception as exc:
        await fail(public_failure(exc))
        return None


def _parse(text: str) -> dict | str:
    """The frame as a dict, or what is wrong with it."""
    try:
        frame = json.loads(text)
    except ValueError:
        return "messages must be JSON objects"
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        return "messages must be JSON objects with a string `type`"
    return frame


async def _read(websocket: WebSocket, session: LiveSession, server: ServerSettings, send, fail) -> None:
    """Client frames into the session until the client closes, or breaks the rate or idle limit."""
    rate = _RateLimit(server.live_max_messages_per_second)
    while True:
        with anyio.move_on_after(server.live_idle_seconds) as waited:
            message = await websocket.receive()
        if waited.cancelled_caught:
            if session.busy():
                continue  # still speaking: a client that just listens is not idle
            await fail(error_frame("idle_timeout", f"no message for {server.live_idle_seconds:g} seconds and "
                                   "nothing left to say (LIVE_IDLE_SECONDS)"))
            return
        if message["type"] == "websocket.disconnect":
            return
        if not rate.allow():
            await fail(error_frame("rate_limited", f"more than {server.live_max_messages_per_second} messages in "
                                   "one second (LIVE_MAX_MESSAGES_PER_SECOND); send longer text pieces"))
            return
        if message.get("text") is None:
            await send(error_frame("invalid_input", "messages must be JSON text frames, not binary", "type"))
            continue
        frame = _parse(message["text"])
        if isinstance(frame, str):
            await send(error_frame("invalid_input", frame, "type"))
            continue
        kind = frame["type"]
        if kind not in MESSAGES:
            await send(error_frame("invalid_input", f"type: {kind[:40]!r} is not one of {', '.join(MESSAGES)}"
                                   + (" (the config was already given)" if kind == "config" else ""), "type"))
            continue
        if extra := sorted(set(frame) - MESSAGES[kind]):
            await send(error_frame("invalid_input", f"{extra[0][:40]}: unknown field of a {kind} message",
                                   extra[0][:40]))
            continue
        try:
            if kind == "text":
                session.text(frame.get("text"))
            elif kind == "flush":
                session.flush()
            elif kind == "cancel":
                session.cancel()
            else:
                session.close()
        except InputError as exc:
            await send(public_failure(exc))


async def _write(websocket: WebSocket, session: LiveSession, send, fail, scope, ended: dict, outcome: Outcome,
                 waiters: anyio.CapacityLimiter) -> None:
    """Session events to the client; after `done` (or a fatal error) the socket is closed."""
    try:
        while True:
            event = await anyio.to_thread.run_sync(session.next_event, POLL_SECONDS, limiter=waiters)
            if event is None:
                continue
            if event["type"] == "audio":
                event = {**event, "audio": base64.b64encode(event["audio"]).decode("ascii")}
            if event.pop("fatal", False):
                await fail(event, 1011)
                break
            await send(event)
            if event["type"] == "done":
                ended.update(code="done", done=event)
                if event.get("first_audio_seconds") is not None:
                    outcome.first_audio(event["first_audio_seconds"])
                await websocket.close(code=1000)
                break
    except (WebSocketDisconnect, RuntimeError):
        pass
    scope.cancel()
