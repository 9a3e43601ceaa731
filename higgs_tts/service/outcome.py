"""One request's audit line and metrics, written here and nowhere else.

Every surface (the service's jobs, the HTTP routes, the live socket, the RunPod worker, Wyoming)
makes one Outcome per request, tells it what happened, and ends it with `emit()`:

    first_audio(seconds=None)   time to its first audio (metrics)
    ok(result, delivery)        audio made: the result's metrics and facts, status 200
    succeeded(response)         a job's documented response: the audit's facts from it, status 200
    spoke(done)                 a live session's `done` event: its counts in the audit, status 200
    failed(failure, status)     a Failure: its code in the audit, its status (or `status`) in the metrics
    left()                      the client closed the request before its end: `cancelled` in the
                                audit, a normal end (200) in the metrics (a live session the client closes)
    counted(status, code=None)  a request that is not a job ends: counted (then emitted)
    note(**facts)               facts for the audit line (never text or audio)
    emit(seconds=None)          once, when the request is over: the audit line, and the count by
                                endpoint, model, status and error code. Nothing said by then: the
                                caller went away mid-way, so it is `cancelled` (409)

`metrics` is the HTTP server's (delivery/metrics.py: `observe`, `record`, `first_audio`); None where
none are kept (the RunPod worker, Wyoming). `audit` is None for requests that are not jobs
(a status lookup, a refused key): they are counted only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .audit import AuditRecord
from .errors import STATUS, Failure


@dataclass
class Outcome:
    audit: AuditRecord | None = None
    metrics: object | None = None  # delivery.metrics.Metrics
    endpoint: str = ""
    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    status: int | None = None  # for the metrics; None until told
    code: str | None = None
    emitted: bool = False

    def first_audio(self, seconds: float | None = None) -> None:
        if self.metrics is not None:
            self.metrics.first_audio.observe(time.perf_counter() - self.started if seconds is None else seconds)

    def ok(self, result, delivery: str) -> None:
        if self.metrics is not None:
            self.metrics.record(result)
        if self.audit is not None:
            self.audit.status = "ok"
            self.audit.facts.update(audio_duration=round(result.duration_seconds, 3), delivery=delivery)
        self.status, self.code = 200, None

    def succeeded(self, response: dict) -> None:
        if self.audit is not None:
            self.audit.succeed(response)
        self.status, self.code = 200, None

    def spoke(self, done: dict) -> None:
        """A live session ended with its `done` event (service/live.py): its counts, status 200."""
        self.note(**{k: done[k] for k in ("segments", "text_chars", "first_audio_seconds") if k in done},
                  audio_duration=done["duration_seconds"])
        self.succeeded({})

    def failed(self, failure: Failure, status: int | None = None) -> None:
        if self.audit is not None:
            self.audit.fail(failure.code)
        self.status, self.code = status or failure.status, failure.code

    def left(self) -> None:
        if self.audit is not None:
            self.audit.fail("cancelled")
        self.status, self.code = 200, None

    def counted(self, status: int, code: str | None = None) -> None:
        """A request that is not a job (a lookup, a refusal) has ended: its status and code, counted."""
        self.status, self.code = status, code
        self.emit()

    def note(self, **facts) -> None:
        if self.audit is not None:
            self.audit.facts.update(facts)

    def emit(self, seconds: float | None = None) -> None:
        if self.emitted:
            return
        self.emitted = True
        if self.status is None:  # never told how it ended: its caller went away mid-way
            self.failed(Failure("the caller went away", "cancelled"), STATUS["cancelled"])
        if self.audit is not None:
            self.audit.emit(time.perf_counter() - self.started if seconds is None else seconds)
        if self.metrics is not None:
            self.metrics.observe(self.endpoint, self.started, self.status, self.model, self.code)
