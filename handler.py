"""RunPod serverless worker: wiring only (the handlers are in higgs_tts/delivery/runpod.py).

    python -u handler.py                      # worker (on RunPod), or one job from test_input.json
    python handler.py --rp_serve_api          # local API server on :8000 (/run, /runsync, /status)

With STREAMING=1 the worker registers a generator handler: jobs with `stream: true` send audio
items to RunPod's /stream endpoint. The SDK then returns every job's output as the list of what
it yielded, so a whole (non-stream) job answers `[response]`; the clients accept both shapes.
"""

from __future__ import annotations

import logging
import os
import threading

# The SDK logs job inputs at its default DEBUG level; transcripts stay out of logs.
os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")

import runpod  # noqa: E402
from runpod.http_client import AsyncClientSession  # noqa: E402
from runpod.serverless.modules import rp_fastapi, rp_http, rp_scale, worker_state  # noqa: E402

from higgs_tts.core.memory import fix_mmap_threshold  # noqa: E402
from higgs_tts.delivery import shutdown  # noqa: E402
from higgs_tts.delivery.runpod import Platform, Worker  # noqa: E402
from higgs_tts.settings import ServerSettings, Settings  # noqa: E402


async def send_stream_item(job: dict, item: dict) -> None:
    """One item onto the job's /stream, as the SDK sends each item it streams."""
    async with AsyncClientSession() as session:
        await rp_http.stream_result(session, {"output": item}, job)


# On RunPod (the SDK has a job API to talk to), progress and stream items go to it; the SDK's local
# modes (--rp_serve_api, --test_input, test_input.json) have none.
worker = Worker(platform=None if worker_state.IS_LOCAL_TEST else
                Platform(progress_update=runpod.serverless.progress_update, send_stream_item=send_stream_item))

# SIGTERM (RunPod stopping the worker): the SDK's handler only stops taking jobs and then waits for
# the running ones; stopping their generations too lets the worker exit within seconds. The SDK
# installs its handler inside start(), so the method it installs is the one wrapped here.
_sdk_shutdown = rp_scale.JobScaler.handle_shutdown


def handle_shutdown(scaler, signum, frame):
    worker.shutdown()
    _sdk_shutdown(scaler, signum, frame)


rp_scale.JobScaler.handle_shutdown = handle_shutdown


# The local API (--rp_serve_api) is the SDK's uvicorn.run(), whose SIGTERM waits for every request
# in flight: a long job kept generating, and the process alive, for minutes. Served here instead
# the way `higgs-tts serve` is: SIGTERM stops every generation first (the job answers `cancelled`),
# and the process is gone within seconds (delivery/shutdown.py). One process: the SDK's `workers`
# needs an import string, which its app is not.
def start_uvicorn(api, api_host="localhost", api_port=8000, api_concurrency=1):
    config = shutdown.config(api.rp_app, api_host, int(api_port), ServerSettings.from_env().log_level)
    shutdown.StoppingServer(config, worker.shutdown).run()


rp_fastapi.WorkerAPI.start_uvicorn = start_uvicorn

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fix_mmap_threshold(Settings.from_env().malloc_mmap_threshold)  # before any large allocation
    server = ServerSettings.from_env()
    if server.preload_model:
        threading.Thread(target=worker.preload, name="preload", daemon=True).start()
    worker.cleaner.start()
    runpod.serverless.start(worker.config(server.streaming))
