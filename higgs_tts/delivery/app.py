"""The HTTP server: one router per surface, wired here.

    higgs-tts serve --host 127.0.0.1 --port 8000

Surfaces: OpenAI's speech API (`openai.py`), RunPod's job API (`jobs.py`), operations: health and
metrics (`operations.py`); the API key and the body limit wrap them all (`middleware.py`).
"""

from __future__ import annotations

import logging
import threading

from fastapi import FastAPI

from ..service.speech import SpeechService
from ..settings import ServerSettings
from . import jobs, openai, operations
from .metrics import Metrics
from .middleware import BearerAuth, BodyLimit

log = logging.getLogger(__name__)


def create_app(service: SpeechService | None = None, server: ServerSettings | None = None) -> FastAPI:
    service = service or SpeechService()
    server = server or ServerSettings()
    metrics = Metrics(service.synthesizer.engine_load)
    app = FastAPI(title="Higgs Audio V2 TTS", version="0.1.0")
    if server.api_key:
        app.add_middleware(BearerAuth, api_key=server.api_key)
    app.add_middleware(BodyLimit, max_bytes=server.max_request_bytes)
    for surface in (operations, openai, jobs):
        app.include_router(surface.router(service, metrics))
    return app


def _preload(service: SpeechService) -> None:
    try:
        service.synthesizer.prepare()
    except Exception as exc:  # reported by /health and by the first request instead
        log.warning("model preload failed: %s", exc)


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    server = ServerSettings.from_env()
    if not server.api_key and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without API_KEY: anyone who can reach this port can generate speech and "
                    "add voices; set API_KEY", host)
    service = SpeechService()
    if server.preload_model:
        threading.Thread(target=_preload, args=(service,), name="preload", daemon=True).start()
    app = create_app(service, server)
    uvicorn.run(app, host=host, port=port, log_level=server.log_level, access_log=False)
