"""RunPod serverless worker: adapts RunPod jobs to the speech service.

    python -u handler.py                      # worker (on RunPod), or one job from test_input.json
    python handler.py --rp_serve_api          # local API server on :8000 (/run, /runsync, /status)

With STREAMING=1 the worker registers a generator handler: jobs with `stream: true` send audio
items to RunPod's /stream endpoint. The SDK then returns every job's output as the list of what
it yielded, so a whole (non-stream) job answers `[response]`; the clients accept both shapes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

# The SDK logs job inputs at its default DEBUG level; transcripts stay out of logs.
os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")

import runpod  # noqa: E402

from higgs_tts.service.maintenance import IdleCleaner  # noqa: E402
from higgs_tts.service.speech import SpeechService  # noqa: E402

service = SpeechService()
cleaner = IdleCleaner(
    service.synthesizer,
    idle_seconds=service.service.idle_cleanup_seconds,
    unload=service.service.unload_after_idle,
)


async def handler(job: dict) -> dict:
    """One job: generation runs in a worker thread so the SDK's event loop stays free. Up to
    MAX_CONCURRENCY jobs run at once; the engine decodes them together."""
    cleaner.job_started()
    cancel = threading.Event()
    try:
        return await asyncio.to_thread(service.handle, job.get("input"), str(job.get("id", "")),
                                       job.get("s3Config"), cancel)
    except asyncio.CancelledError:  # the job was cancelled or timed out: give its engine slot back
        cancel.set()
        raise
    finally:
        cleaner.job_finished()


async def streaming_handler(job: dict):
    """Streaming jobs: each item is produced in a worker thread; other jobs yield their one response."""
    cleaner.job_started()
    items = service.stream_job(job.get("input"), str(job.get("id", "")), job.get("s3Config"))
    try:
        while (item := await asyncio.to_thread(next, items, None)) is not None:
            yield item
    finally:
        await asyncio.to_thread(items.close)
        cleaner.job_finished()


def concurrency_modifier(current_concurrency: int) -> int:
    return max(1, service.service.max_concurrency)


def _preload() -> None:
    try:
        service.synthesizer.prepare()
    except Exception as exc:  # reported by health and by the first job instead
        logging.getLogger("handler").warning("model preload failed: %s", exc)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("PRELOAD_MODEL", "1").lower() in ("1", "true", "yes"):
        threading.Thread(target=_preload, name="preload", daemon=True).start()
    cleaner.start()
    streaming = os.environ.get("STREAMING", "0").lower() in ("1", "true", "yes")
    runpod.serverless.start({
        "handler": streaming_handler if streaming else handler,
        "concurrency_modifier": concurrency_modifier,
        "return_aggregate_stream": True,  # /run and /runsync of a streaming worker get the items as a list
    })
