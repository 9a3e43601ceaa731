"""Operations: health (never behind the key) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..service.speech import SpeechService
from .metrics import Metrics


def router(service: SpeechService, metrics: Metrics) -> APIRouter:
    api = APIRouter()

    @api.get("/health")
    def health():
        payload = service.health()
        return JSONResponse(status_code=200 if payload["status"] == "healthy" else 503, content=payload)

    @api.get("/metrics")
    def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return api
