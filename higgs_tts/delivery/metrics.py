"""Prometheus metrics of the HTTP server (written through service/outcome.py's Outcome, one per request)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, engine_load=None, codec_stats=None) -> None:
        """`engine_load()` gives (running sequences, waiting sequences, admitted requests);
        `codec_stats()` (codec calls, pieces decoded, pieces waiting)."""
        self.registry = CollectorRegistry()
        self.requests = Counter("higgs_requests_total", "Requests by endpoint, model and HTTP status",
                                ["endpoint", "model", "status"], registry=self.registry)
        self.errors = Counter("higgs_request_errors_total", "Failed requests by endpoint and error code",
                              ["endpoint", "code"], registry=self.registry)
        self.duration = Histogram("higgs_request_duration_seconds", "Request duration", ["endpoint"],
                                  buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_audio = Histogram("higgs_time_to_first_audio_seconds", "Time until the first audio byte is ready",
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.real_time_factor = Histogram("higgs_real_time_factor", "Compute seconds per second of audio",
                                          buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
                                          registry=self.registry)
        self.audio_seconds = Counter("higgs_audio_seconds_total", "Seconds of audio generated",
                                     registry=self.registry)
        gpu = Gauge("higgs_gpu_memory_bytes", "GPU memory allocated by this process", ["kind"],
                    registry=self.registry)
        gpu.labels("allocated").set_function(lambda: _cuda_memory("allocated"))
        gpu.labels("reserved").set_function(lambda: _cuda_memory("reserved"))
        if engine_load is not None:
            engine = Gauge("higgs_engine_load", "Continuous batching: sequences decoding or waiting, requests admitted",
                           ["kind"], registry=self.registry)
            for index, kind in enumerate(("running", "waiting", "admitted")):
                engine.labels(kind).set_function(lambda index=index: engine_load()[index])
        if codec_stats is not None:
            self.registry.register(_CodecCollector(codec_stats))

    def observe(self, endpoint: str, started: float, status: int, model: str = "", code: str | None = None) -> None:
        """One finished request: its count by endpoint, model and status, its duration, its error code."""
        self.requests.labels(endpoint, model[:64], str(status)).inc()
        self.duration.labels(endpoint).observe(time.perf_counter() - started)
        if code:
            self.errors.labels(endpoint, code).inc()

    def record(self, result) -> None:
        """Audio produced and its real-time factor (compute seconds per audio second)."""
        if result.duration_seconds:
            compute = result.generation_seconds + result.decode_seconds
            self.real_time_factor.observe(compute / result.duration_seconds)
            self.audio_seconds.inc(result.duration_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CodecCollector:
    """The codec worker's counts, read when scraped: pieces above calls mean batched decodes."""

    def __init__(self, codec_stats) -> None:
        self.codec_stats = codec_stats

    def collect(self):
        calls, pieces, waiting = self.codec_stats()
        yield CounterMetricFamily("higgs_codec_calls", "Codec decode calls (each decodes a batch of pieces)",
                                  value=calls)
        yield CounterMetricFamily("higgs_codec_pieces", "Pieces of audio decoded by the codec", value=pieces)
        yield GaugeMetricFamily("higgs_codec_waiting", "Pieces waiting for the codec", value=waiting)


def _cuda_memory(kind: str) -> float:
    import torch

    if not torch.cuda.is_available():
        return 0.0
    return float(torch.cuda.memory_allocated() if kind == "allocated" else torch.cuda.memory_reserved())
