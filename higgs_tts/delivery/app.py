"""The HTTP server: one router per surface, wired here.

    higgs-tts serve --host 127.0.0.1 --port 8000

Surfaces: OpenAI's speech API (`openai.py`, voice aliases in `aliases.py`), RunPod's job API
(`jobs.py`), operations: health and metrics (`operations.py`), voices: upload, read, delete
(`voices.py`), live speech over a WebSocket (`live.py`), the web playground (`playground.py`, at
`/playground`); the API key and the body limit wrap them all (`middleware.py`), CORS (when
`CORS_ORIGINS` is set) wraps those.
"""

from __future__ import annotations

import logging
import threading
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException

from .. import __version__
from ..service.speech import SpeechService
from ..settings import ServerSettings
from . import jobs, live, openai, operations, playground, shutdown, voices
from .aliases import VoiceAliases
from .metrics import Metrics
from .middleware import BearerAuth, BodyLimit, HideQueryKey, openai_error

log = logging.getLogger(__name__)


def create_app(service: SpeechService | None = None, server: ServerSettings | None = None) -> FastAPI:
    service = service or SpeechService()
    server = server or ServerSettings()
    metrics = Metrics(service.synthesizer.engine_load, service.synthesizer.codec_stats)
    app = FastAPI(title="Higgs Audio V2 TTS", version=__version__)
    app.state.server = server  # for routes that need the process's settings (WEBHOOK_ALLOWLIST)
    app.state.service = service
    if server.api_key:
        app.add_middleware(BearerAuth, api_key=server.api_key)
    app.add_middleware(BodyLimit, max_bytes=server.max_request_bytes)
    if server.cors_origins:  # outermost: preflights are answered before the key is asked for
        app.add_middleware(CORSMiddleware, allow_origins=list(server.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=list(openai.RESULT_HEADERS))
    app.include_router(operations.router(service, metrics))
    aliases = VoiceAliases.load(server.voice_aliases_path)
    app.include_router(openai.router(service, metrics, aliases))
    app.include_router(live.router(service, metrics, server, aliases))
    app.include_router(voices.router(service, metrics))
    app.include_router(jobs.router(service, metrics))
    app.include_router(playground.router())
    _error_bodies(app)
    return app


def _error_bodies(app: FastAPI) -> None:
    """Every error status answers OpenAI's body, never FastAPI's `{"detail": ...}` or plain text."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        return openai_error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid"}
        field = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return openai_error(400, f"{field}: {first['msg']}", "invalid_input", field)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        request_id = uuid.uuid4().hex[:12]
        log.error("request %s to %s failed", request_id, request.url.path, exc_info=exc)  # the traceback: log only
        return openai_error(500, f"internal error ({type(exc).__name__}); request id {request_id}", "internal_error")


def _preload(service: SpeechService, app: FastAPI) -> None:
    try:
        service.synthesizer.prepare()
    except Exception as exc:  # reported by /ping, /health and the first request instead
        log.warning("model preload failed: %s", exc)
        app.state.preload_error = f"model preload failed: {exc}"


def health_app(app: FastAPI) -> FastAPI:
    """Only /ping, for RunPod's load balancer on PORT_HEALTH when it differs from PORT."""
    probe = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    probe.add_api_route("/ping", lambda: operations.ping_reply(app.state.service,
                                                                getattr(app.state, "preload_error", None)))
    return probe


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """The HTTP server; with PORT_HEALTH set to another port, /ping is served there too (RunPod's
    load-balancing endpoints check it there)."""
    import asyncio

    import uvicorn

    server = ServerSettings.from_env()
    if not server.api_key and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without API_KEY: anyone who can reach this port can generate speech and "
                    "add voices; set API_KEY", host)
    service = SpeechService()
    app = create_app(service, server)
    if server.preload_model:
        threading.Thread(target=_preload, args=(service, app), name="preload", daemon=True).start()
    servers: list[uvicorn.Server] = []

    def stop() -> None:
        """SIGTERM or Ctrl-C: stop every generation now (their requests end `cancelled`) and every server."""
        service.synthesizer.stop_all()
        for other in servers:
            other.should_exit = True

    def config(served: FastAPI, on_port: int) -> uvicorn.Config:
        return shutdown.config(served, host, on_port, server.log_level)

    servers.append(shutdown.StoppingServer(config(app, port), stop))
    logging.getLogger("uvicorn.error").addFilter(HideQueryKey())  # after the Config set up uvicorn's logging
    if server.health_port is not None and server.health_port != port:
        servers.append(shutdown.StoppingServer(config(health_app(app), server.health_port), stop))

    async def run_all() -> None:
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(run_all())
