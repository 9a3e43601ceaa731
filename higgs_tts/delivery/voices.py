"""Voices as a resource over HTTP: upload (multipart), read and delete one voice.

    POST   /v1/voices          multipart: name, file, transcript, description?, overwrite?
    GET    /v1/voices/{name}   {"name", "kind", "description", "transcript"?, "duration_seconds"?}
    DELETE /v1/voices/{name}   {"name", "deleted": true}

The list (`GET /v1/voices`) is OpenAI's surface (`openai.py`). Each route runs the worker's own
action (`add_voice`, `get_voice`, `delete_voice`), so the rules and the atomic writes are the
same; errors come back in OpenAI's error body with the HTTP parameter's name.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse

from ..service.errors import STATUS
from ..service.outcome import Outcome
from ..service.speech import SpeechService
from .metrics import Metrics
from .middleware import openai_error

# The action's field -> this surface's parameter, for error messages and `param`.
PARAMS = {"voice_name": "name", "ref_audio_base64": "file", "ref_audio_transcript": "transcript"}


def _reply(response: dict, started: float, metrics: Metrics, status: int = 200, body: dict | None = None):
    if response.get("success"):
        Outcome(metrics=metrics, endpoint="voices", started=started).counted(status)  # audited by the action
        return JSONResponse(status_code=status, content=body if body is not None else response)
    code, field = response.get("error_code", "internal_error"), response.get("error_field")
    message, param = response.get("error", "failed"), PARAMS.get(field, field)
    if field and param != field and message.startswith(field):
        message = param + message[len(field):]
    Outcome(metrics=metrics, endpoint="voices", started=started).counted(STATUS.get(code, 500), code)
    return openai_error(STATUS.get(code, 500), message, code, param)


def router(service: SpeechService, metrics: Metrics) -> APIRouter:
    api = APIRouter()

    def run(job: dict) -> dict:
        return service.handle(job, f"http-{uuid.uuid4().hex[:12]}")

    @api.post("/v1/voices")
    async def upload(name: Annotated[str, Form()], file: Annotated[UploadFile, File()],
                     transcript: Annotated[str, Form()], description: Annotated[str | None, Form()] = None,
                     overwrite: Annotated[bool, Form()] = False):
        started = time.perf_counter()
        data = await file.read(service.service.max_reference_bytes + 1)  # one byte over tells "too large"
        job = {"action": "add_voice", "voice_name": name, "ref_audio_transcript": transcript,
               "ref_audio_base64": base64.b64encode(data).decode("ascii"), "overwrite": overwrite}
        if description is not None:
            job["description"] = description
        response = await anyio.to_thread.run_sync(run, job)
        if response.get("success"):
            voice = await anyio.to_thread.run_sync(run, {"action": "get_voice", "voice_name": name})
            if voice.get("success"):
                return _reply(response, started, metrics, 201, voice["voice"])
        return _reply(response, started, metrics, 201, response.get("voice"))

    @api.get("/v1/voices/{name}")
    async def read(name: str):
        started = time.perf_counter()
        response = await anyio.to_thread.run_sync(run, {"action": "get_voice", "voice_name": name})
        return _reply(response, started, metrics, body=response.get("voice"))

    @api.delete("/v1/voices/{name}")
    async def delete(name: str):
        started = time.perf_counter()
        response = await anyio.to_thread.run_sync(run, {"action": "delete_voice", "voice_name": name})
        return _reply(response, started, metrics, body={"name": name, "deleted": True})

    return api
