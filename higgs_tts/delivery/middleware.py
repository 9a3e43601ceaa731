"""What every HTTP route shares: OpenAI's error body, the body-size limit and the API key."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware

from ..service.errors import Failure


def openai_error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def in_request_names(failure: Failure, names: dict[str, str]) -> Failure:
    """The failure in the request's own field names (`names`: job name -> the surface's, e.g.
    `ref_audio` -> `voice`), in its message and its field."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    return dataclasses.replace(failure, message=pattern.sub(lambda m: names[m.group()], failure.message),
                               field=names.get(failure.field, failure.field))


def failure_response(failure: Failure) -> JSONResponse:
    return openai_error(failure.status, failure.message, failure.code, failure.field)


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


# The playground's static page and files (`playground.py`): they hold no data, and the page sends
# the key with every API call it makes.
PUBLIC_PAGES = ("/", "/playground", "/playground/playground.js", "/playground/playground.css")


class HideQueryKey(logging.Filter):
    """uvicorn logs a WebSocket's path with its query string (`"WebSocket /v1/...?api_key=..."`),
    and a browser can only send the key there: the key's value is masked in every record."""

    KEY = re.compile(r"(api_key=)[^&\s\"']*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.KEY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self.KEY.sub(r"\1***", record.msg)
        return True


def websocket_authorized(websocket: WebSocket, api_key: str) -> bool:
    """A WebSocket's key: `Authorization: Bearer <key>`, or `?api_key=<key>` (browsers cannot set
    headers on a WebSocket). BearerAuth never sees WebSockets: the route asks this itself."""
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = websocket.query_params.get("api_key", "")
    return hmac.compare_digest(token.strip().encode(), api_key.encode())


class BearerAuth(BaseHTTPMiddleware):
    """With an API key set, every route but /health, /ping and the playground's page needs
    `Authorization: Bearer <key>` (HTTP only: WebSocket routes check `websocket_authorized`)."""

    def __init__(self, app, api_key: str) -> None:
        super().__init__(app)
        self.api_key = api_key.encode()

    async def dispatch(self, request: Request, call_next):
        if request.url.path not in ("/health", "/ping") and not (request.method == "GET"
                                                                  and request.url.path in PUBLIC_PAGES):
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key):
                return openai_error(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                                    "invalid_api_key")
        return await call_next(request)
