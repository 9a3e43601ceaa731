"""How our uvicorn servers stop on SIGTERM or Ctrl-C (`higgs-tts serve`, and the RunPod SDK's local
API of `handler.py --rp_serve_api`): every generation is stopped first, so the requests in flight
answer `cancelled` at once instead of holding the graceful shutdown for the rest of a long job;
open responses then get SHUTDOWN_SECONDS to end, and a process still alive EXIT_SECONDS after the
signal (a thread stuck where no stop reaches) exits anyway."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import uvicorn

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 5  # on SIGTERM: open responses get this long to end (generations are stopped at once)
EXIT_SECONDS = 9.0  # and the process is gone this long after the signal, whatever still runs


class StoppingServer(uvicorn.Server):
    """A uvicorn server whose exit signal first calls `stop` (stops every generation; stops the
    other servers of the process)."""

    def __init__(self, config: uvicorn.Config, stop: Callable[[], None]) -> None:
        super().__init__(config)
        self.stop = stop

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            exit_anyway()
        self.stop()
        super().handle_exit(sig, frame)


def exit_anyway(seconds: float = EXIT_SECONDS) -> None:
    """The last resort: end the process `seconds` from now if it is still running then (a daemon
    timer: a process that stops sooner never sees it)."""

    def expire() -> None:
        log.error("shutdown did not finish within %.0f s of the signal; exiting", seconds)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def config(app, host: str, port: int, log_level: str) -> uvicorn.Config:
    """uvicorn's settings for one of our servers (no access log: paths may carry tokens)."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=SHUTDOWN_SECONDS)
