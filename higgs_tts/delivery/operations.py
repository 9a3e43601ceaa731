"""Operations: health and RunPod's /ping (never behind the key), and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..service.speech import SpeechService
from .metrics import Metrics


def router(service: SpeechService, metrics: Metrics) -> APIRouter:
    api = APIRouter()

    @api.get("/health")
    def health():
        payload = service.health()
        return JSONResponse(status_code=200 if payload["status"] == "healthy" else 503, content=payload)

    @api.get("/ping")
    def ping(request: Request):
        """RunPod's load balancer asks this (on PORT_HEALTH): 200 when the model is loaded and
        requests can be served, 204 while it is still loading, 503 when it cannot load; RunPod
        routes requests only to workers that answer 200."""
        return ping_reply(service, getattr(request.app.state, "preload_error", None))

    @api.get("/metrics")
    def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return api


def ping_reply(service: SpeechService, preload_error: str | None) -> Response:
    if service.synthesizer.loaded_model() is not None:
        return JSONResponse({"status": "healthy"})
    status = service.health()["status"]  # the files' check while nothing is loaded
    if preload_error or status != "healthy":
        return JSONResponse(status_code=503, content={"status": "unhealthy", "error": preload_error or status})
    return Response(status_code=204)  # initializing
