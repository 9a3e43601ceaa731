"""RunPod's job API on the HTTP server (`/run`, `/runsync`, `/status`, `/stream`, `/cancel`), so
RunPod clients work unchanged against `higgs-tts serve`."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request
from pydantic import BaseModel

from ..service.audit import AuditRecord
from ..service.errors import describe_failure
from ..service.outcome import Outcome
from ..service.speech import SpeechService
from .disconnect import run_while_connected
from .metrics import Metrics
from .middleware import openai_error
from .runpod import runpod_reply, stream_items
from .webhooks import WebhookRefused, WebhookSender, check_url

log = logging.getLogger(__name__)

MAX_JOBS_KEPT = 1000  # finished jobs' results kept for /status, newest first
MAX_PENDING_JOBS = 64  # jobs queued or running; the next /run is told `busy` (each holds its input in memory)
MAX_RESULT_BYTES = 256 * 1024 * 1024  # finished results kept in memory, at most (the oldest go first)
RESULT_SECONDS = 30 * 60  # a finished result is kept this long (RunPod keeps /run results 30 minutes)
MAX_EXPIRED_KEPT = 10_000  # ids of results that expired, so /status can say so rather than "no job"
FINAL = ("COMPLETED", "FAILED", "CANCELLED")


class RunRequest(BaseModel):
    input: dict
    webhook: str | None = None


class Jobs:
    """RunPod-style asynchronous jobs, kept in memory (the newest MAX_JOBS_KEPT).

    A job with `stream: true` collects its items as they are produced; `/stream/{id}` hands out
    the ones not read yet, as RunPod's endpoint does. A job with a webhook gets its final reply
    POSTed there when it ends (see `webhooks.py`).
    """

    def __init__(self, service: SpeechService, workers: int, metrics: Metrics | None = None) -> None:
        self.service = service
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="job")
        self.webhooks = WebhookSender()  # one queue and thread per receiver: a slow one delays only itself
        self.lock = threading.Lock()
        self.jobs: OrderedDict[str, dict] = OrderedDict()
        self.streams: dict[str, list] = {}  # job id -> [items, number read]
        self.cancels: dict[str, threading.Event] = {}
        self.finished: OrderedDict[str, tuple[float, int]] = OrderedDict()  # id -> (when, result bytes)
        self.expired: OrderedDict[str, str] = OrderedDict()  # id -> why its result is gone

    def submit(self, job_input: dict, webhook: str | None = None, allowlist: tuple[str, ...] = ()) -> str | None:
        """The new job's id, or None when MAX_PENDING_JOBS are already queued or running. The
        reply goes to `webhook` when the job ends (`allowlist`: WEBHOOK_ALLOWLIST)."""
        job_id = f"job-{uuid.uuid4()}"
        with self.lock:
            pending = sum(job["status"] in ("IN_QUEUE", "IN_PROGRESS") for job in self.jobs.values())
            if pending >= MAX_PENDING_JOBS:
                return None
            self.jobs[job_id] = {"id": job_id, "status": "IN_QUEUE"}
            self.cancels[job_id] = threading.Event()
            self._prune()
            while len(self.jobs) > MAX_JOBS_KEPT and self.finished:  # finished ones only: a running job stays
                oldest = next(iter(self.finished))
                self._forget(oldest, f"its result was dropped: the newest {MAX_JOBS_KEPT} jobs are kept")
        self.pool.submit(self._run, job_id, job_input, webhook, allowlist)
        return job_id

    def cancel(self, job_id: str) -> dict | None:
        """RunPod's /cancel: a queued job never runs; a running one stops within one engine burst."""
        with self.lock:
            job, event = self.jobs.get(job_id), self.cancels.get(job_id)
            if job is None or event is None:
                return None
            event.set()
            if job["status"] in ("IN_QUEUE", "IN_PROGRESS"):
                job["status"] = "CANCELLED"
                self._finished(job_id, job)
            return {"id": job_id, "status": job["status"]}

    def _run(self, job_id: str, job_input: dict, webhook: str | None = None,
             allowlist: tuple[str, ...] = ()) -> None:
        # audited and counted under "run" by the service when the job ends (a job cancelled while
        # queued, or one that crashed here, is ended below)
        outcome = Outcome(AuditRecord(job_id=job_id, raw=job_input), self.metrics, "run")
        cancel = self.cancels.get(job_id) or threading.Event()
        try:
            if cancel.is_set():
                return
            self._set(job_id, status="IN_PROGRESS")
            self._execute(job_id, job_input, cancel, outcome)
        except Exception as exc:  # never leave a job IN_PROGRESS forever
            log.exception("job %s crashed", job_id)
            self._set(job_id, status="FAILED", error=f"internal error ({type(exc).__name__})")
            outcome.failed(describe_failure(exc, job_id))
        finally:
            outcome.emit()  # once: a no-op when the service has ended it; untold, it was cancelled
            reply = self.get(job_id) or {"id": job_id, "status": "CANCELLED"}
            if webhook is not None:
                self.webhooks.send(webhook, reply, allowlist)

    def _execute(self, job_id: str, job_input: dict, cancel: threading.Event, outcome: Outcome) -> None:
        if not (isinstance(job_input, dict) and job_input.get("stream") is True):
            reply = runpod_reply(job_id, self.service.handle(job_input, job_id, cancel=cancel, outcome=outcome))
            self._set(job_id, **(reply if not cancel.is_set() else {**reply, "status": "CANCELLED"}))
            return
        items: list[dict] = []  # read by /stream/{id} while they come
        with self.lock:
            self.streams[job_id] = [items, 0]
        # /cancel stops it mid-chunk
        stream = stream_items(self.service, job_input, job_id, cancel=cancel, outcome=outcome)
        for item in stream:
            if cancel.is_set():  # closing the stream gives the engine slot back
                stream.close()
                return
            with self.lock:
                items.append(item)
        self._set(job_id, **runpod_reply(job_id, list(items)))

    def _set(self, job_id: str, **fields) -> None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None and not (job["status"] == "CANCELLED" and fields.get("status") == "IN_PROGRESS"):
                job.update(fields)
                if job["status"] in FINAL:
                    self._finished(job_id, job)

    def _finished(self, job_id: str, job: dict) -> None:
        """Count a finished result against MAX_RESULT_BYTES, and drop what is beyond the bounds."""
        stream = self.streams.get(job_id)
        size = len(json.dumps(job, default=str)) + (len(json.dumps(stream[0], default=str)) if stream else 0)
        self.finished[job_id] = (time.monotonic(), size)
        self.finished.move_to_end(job_id)
        self._prune()

    def _prune(self) -> None:
        """Results older than RESULT_SECONDS, then the oldest while all are above MAX_RESULT_BYTES."""
        now = time.monotonic()
        total = sum(size for _, size in self.finished.values())
        while self.finished:
            job_id, (when, size) = next(iter(self.finished.items()))
            if now - when > RESULT_SECONDS:
                why = f"its result expired: results are kept {RESULT_SECONDS // 60} minutes"
            elif total > MAX_RESULT_BYTES:
                why = f"its result was dropped: at most {MAX_RESULT_BYTES // 2**20} MB of results are kept"
            else:
                break
            total -= size
            self._forget(job_id, why)

    def _forget(self, job_id: str, why: str) -> None:
        self.finished.pop(job_id, None)
        self.jobs.pop(job_id, None)
        self.streams.pop(job_id, None)
        self.cancels.pop(job_id, None)
        self.expired[job_id] = why
        while len(self.expired) > MAX_EXPIRED_KEPT:
            self.expired.popitem(last=False)

    def gone(self, job_id: str) -> str | None:
        """Why a job's result is no longer kept (None: never known, or still here)."""
        with self.lock:
            self._prune()
            return self.expired.get(job_id)

    def get(self, job_id: str) -> dict | None:
        with self.lock:
            self._prune()
            job = self.jobs.get(job_id)
            return dict(job) if job else None

    def read_stream(self, job_id: str) -> dict | None:
        """The job's status and the stream items produced since the last read."""
        with self.lock:
            job, stream = self.jobs.get(job_id), self.streams.get(job_id)
            if job is None:
                return None
            if stream is None:
                return {"id": job_id, "status": job["status"], "stream": []}
            items, read = stream
            stream[1] = len(items)
            reply = {"id": job_id, "status": job["status"], "stream": [{"output": i} for i in items[read:]]}
            if job.get("error"):
                reply["error"] = job["error"]
            return reply



def router(service: SpeechService, metrics: Metrics) -> APIRouter:
    api = APIRouter()
    jobs = Jobs(service, service.service.max_concurrency, metrics)

    @api.post("/runsync")
    async def runsync(job: RunRequest, request: Request):
        job_id = f"sync-{uuid.uuid4()}"
        # The HTTP answer is 200 either way (RunPod's shape); the metrics count what the job did.
        outcome = Outcome(AuditRecord(job_id=job_id, raw=job.input), metrics, "runsync")
        cancel = threading.Event()  # set when the caller disconnects: the job stops at its next step
        try:
            if job.input.get("stream") is True:  # every item at once, as RunPod's /runsync gives a stream job
                output = await run_while_connected(
                    request, cancel, lambda: list(stream_items(service, job.input, job_id, cancel=cancel,
                                                               outcome=outcome)))
            else:
                output = await run_while_connected(request, cancel, service.handle, job.input, job_id, None, cancel,
                                                   None, outcome)
        finally:
            outcome.emit()  # a no-op when the service has ended it
        return runpod_reply(job_id, output)

    def count(route: str, started: float, status: int, code: str | None = None) -> None:
        Outcome(metrics=metrics, endpoint=route, started=started).counted(status, code)  # not a job: no audit

    @api.post("/run")
    def run(job: RunRequest, request: Request):
        started = time.perf_counter()
        allowlist = request.app.state.server.webhook_allowlist  # hosts a webhook may reach though private
        if job.webhook is not None:
            try:
                check_url(job.webhook, allowlist)
            except WebhookRefused as exc:
                count("run", started, 400, "invalid_input")
                return openai_error(400, str(exc), "invalid_input", "webhook")
        job_id = jobs.submit(job.input, job.webhook, allowlist)
        if job_id is None:
            count("run", started, 503, "busy")
            return openai_error(503, f"the server is busy: {MAX_PENDING_JOBS} jobs are queued or running; "
                                     "try again shortly", "busy")
        return {"id": job_id, "status": "IN_QUEUE"}  # counted under "run" when the job ends

    def not_found(route: str, started: float, job_id: str):
        if why := jobs.gone(job_id):
            count(route, started, 404, "expired")
            return openai_error(404, f"job {job_id!r}: {why}", "expired", "job_id")
        count(route, started, 404, "not_found")
        return openai_error(404, f"no job {job_id!r}", "not_found", "job_id")

    def answer(route: str, job_id: str, look_up):
        """`look_up(job_id)`'s reply, or the 404 that says why there is none; counted under `route`."""
        started = time.perf_counter()
        reply = look_up(job_id)
        if reply is None:
            return not_found(route, started, job_id)
        count(route, started, 200)
        return reply

    @api.api_route("/status/{job_id}", methods=["GET", "POST"])
    def status(job_id: str):
        return answer("status", job_id, jobs.get)

    @api.post("/cancel/{job_id}")
    def cancel(job_id: str):
        return answer("cancel", job_id, jobs.cancel)

    @api.api_route("/stream/{job_id}", methods=["GET", "POST"])
    def stream(job_id: str):
        return answer("stream", job_id, jobs.read_stream)

    return api
