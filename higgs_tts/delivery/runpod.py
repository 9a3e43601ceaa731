"""RunPod's side of the contract: the worker's handlers, stream items and reply shapes.

Pure functions over the speech service: `handler.py` wires them into the SDK, and the HTTP
server's RunPod-compatible routes (`jobs.py`) use the same items and replies.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from ..core.audio import SAMPLE_RATE
from ..service import formats
from ..service.events import Audio, ChunkEnd, Final
from ..service.maintenance import IdleCleaner
from ..service.outcome import Outcome
from ..service.speech import Progress, SpeechService

log = logging.getLogger(__name__)

# Streamed jobs' steps (each runs until its next item is ready) run on these threads.
_STEPS = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="stream-step")
STREAM_ITEM_SECONDS = 5.0  # per RunPod stream item: 240 KB of PCM, 320 KB as base64 (the limit is 1 MB)
STREAM_ITEM_BYTES = 1_000_000  # RunPod's limit on one /stream item
PART_CHARS = 750_000  # base64 characters per `audio_part` item (a multiple of 4: each part decodes alone)


def whole_items(response: dict) -> Iterator[dict]:
    """A whole response as stream items, each under STREAM_ITEM_BYTES: the response itself when it
    fits; else its audio in `{"type": "audio_part", "seq", "parts", "audio_base64"}` items, then the
    response without `audio_base64` and with `audio_parts` (the clients join the parts in order)."""
    audio = response.get("audio_base64")
    if not isinstance(audio, str) or len(json.dumps(response)) < STREAM_ITEM_BYTES:
        yield response
        return
    parts = [audio[i:i + PART_CHARS] for i in range(0, len(audio), PART_CHARS)]
    for seq, part in enumerate(parts):
        yield {"type": "audio_part", "seq": seq, "parts": len(parts), "audio_base64": part}
    yield {**{k: v for k, v in response.items() if k != "audio_base64"}, "audio_parts": len(parts)}


def progress_payload(chunks_done: int, chunks_total: int, audio_seconds: float) -> dict:
    """What RunPod's /status shows as `output` while a long job runs (`progress_update`)."""
    return {"type": "progress", "chunks_done": chunks_done, "chunks_total": chunks_total,
            "audio_seconds": round(audio_seconds, 3),
            "message": f"chunk {chunks_done} of {chunks_total} done, {audio_seconds:.1f} s of audio"}


def stream_items(service: SpeechService, raw: object, job_id: str = "local",
                 s3_config: dict | None = None, progress: Progress | None = None,
                 cancel: threading.Event | None = None, outcome: Outcome | None = None) -> Iterator[dict]:
    """RunPod's streaming contract. A job with `stream: true` yields audio items while it is
    generated, then a final item with the usual response fields (and the S3 URL when uploading);
    a failure ends the stream with an error item. Any other job yields exactly its response.

    Audio items: {"type": "audio", "seq", "audio_base64" (16-bit little-endian mono PCM),
    "format": "pcm", "sample_rate", "num_samples", "start_seconds"}, each at most
    STREAM_ITEM_SECONDS long. Every item is under RunPod's 1 MB (see `whole_items`). Setting
    `cancel` ends generation at its next step. The job's audit line (and metrics, when `outcome`
    keeps them) are written by the service when it ends.
    """
    if not (isinstance(raw, dict) and raw.get("stream") is True):
        yield from whole_items(service.handle(raw, job_id, s3_config, cancel, progress, outcome))
        return
    seq = sent = 0
    events = service.stream(raw, job_id, s3_config, cancel, outcome)
    try:
        for event in events:
            match event:
                case Audio(samples):
                    for piece in formats.pieces(samples, int(STREAM_ITEM_SECONDS * SAMPLE_RATE)):
                        yield {"type": "audio", "seq": seq,
                               "audio_base64": base64.b64encode(formats.to_pcm16(piece)).decode("ascii"),
                               "format": "pcm", "sample_rate": SAMPLE_RATE, "num_samples": len(piece),
                               "start_seconds": round(sent / SAMPLE_RATE, 3)}
                        seq, sent = seq + 1, sent + len(piece)
                case ChunkEnd():
                    pass  # the items carry audio and the final response only
                case Final(response) if response.get("success"):
                    yield {"success": True, "type": "final", "seq": seq, "audio_items": seq,
                           **{k: v for k, v in response.items() if k != "success"}}
                case Final(response):
                    yield {**response, "type": "error", "seq": seq}
    finally:
        events.close()


def _close_after(step: concurrent.futures.Future | None, items: Iterator) -> None:
    """Close a generator once its running step (if any) has returned: closing it while another
    thread runs it raises 'generator already executing' and leaves it, and its slot, open."""
    if step is not None:
        concurrent.futures.wait([step])
    items.close()


@dataclass(frozen=True)
class Platform:
    """RunPod's job API as the SDK reaches it (see `handler.py`)."""

    progress_update: Callable[[dict, dict], None]
    send_stream_item: Callable[[dict, dict], Awaitable[None]]


def runpod_reply(job_id: str, output: dict | list[dict]) -> dict:
    """The RunPod shape: FAILED with a top-level `error` when the output says success false. A
    stream job's output is the list of its items, as RunPod aggregates it; the last one says how
    the job ended."""
    last = output[-1] if isinstance(output, list) else output
    if last.get("success") is False:
        return {"id": job_id, "status": "FAILED", "error": last.get("error"), "output": output}
    return {"id": job_id, "status": "COMPLETED", "output": output}


class Worker:
    """The serverless worker's handlers over one speech service.

    `platform` holds the SDK's calls to RunPod's job API (`handler.py` passes them when the worker
    runs on RunPod; the SDK's local modes have no such API): `progress_update(job, payload)`, and
    `send_stream_item(job, item)`, an async call that puts one item on the job's /stream.
    """

    def __init__(self, service: SpeechService | None = None, platform: Platform | None = None) -> None:
        self.service = service or SpeechService()
        self.platform = platform
        self.cleaner = IdleCleaner(self.service.synthesizer, idle_seconds=self.service.service.idle_cleanup_seconds,
                                   unload=self.service.service.unload_after_idle)

    async def handler(self, job: dict) -> dict:
        """One job: generation runs in a worker thread so the SDK's event loop stays free. Up to
        MAX_CONCURRENCY jobs run at once; the engine decodes them together."""
        self.cleaner.job_started()
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self.service.handle, job.get("input"), str(job.get("id", "")),
                                           job.get("s3Config"), cancel, self._progress(job))
        except asyncio.CancelledError:  # the job was cancelled or timed out: give its engine slot back
            cancel.set()
            raise
        finally:
            self.cleaner.job_finished()

    async def streaming_handler(self, job: dict):
        """Streaming jobs: each item is produced in a worker thread; other jobs yield their one response."""
        self.cleaner.job_started()
        cancel = threading.Event()
        items = stream_items(self.service, job.get("input"), str(job.get("id", "")), job.get("s3Config"),
                             self._progress(job), cancel)
        step: concurrent.futures.Future | None = None
        try:
            while True:
                step = _STEPS.submit(next, items, None)
                if (item := await asyncio.wrap_future(step)) is None:
                    break
                if item.get("success") is False and self.platform is not None:
                    # SDK 1.12 ends the job on an item with `error` before streaming it: send it to
                    # /stream first, so the caller sees its error_code; yielding it then marks the
                    # job FAILED with the error as its top-level `error`.
                    await self.platform.send_stream_item(job, item)
                yield item
        finally:
            cancel.set()  # cancelled mid-step: that step ends within one generation step
            try:  # then close (frees the engine slot)
                await asyncio.to_thread(_close_after, step, items)
            finally:
                self.cleaner.job_finished()

    def _progress(self, job: dict) -> Progress | None:
        """Long jobs report each chunk through RunPod's progress_update (its /status shows it)."""
        if self.platform is None:
            return None
        update = self.platform.progress_update
        return lambda done, total, seconds: update(job, progress_payload(done, total, seconds))

    def concurrency_modifier(self, current_concurrency: int) -> int:
        return max(1, self.service.service.max_concurrency)

    def shutdown(self) -> None:
        """The process is told to stop (SIGTERM): every running generation ends at its next step, so
        the SDK's drain of running jobs takes seconds, not the rest of a long job."""
        self.service.synthesizer.stop_all()

    def preload(self) -> None:
        try:
            self.service.synthesizer.prepare()
        except Exception as exc:  # reported by health and by the first job instead
            log.warning("model preload failed: %s", exc)

    def config(self, streaming: bool) -> dict:
        """What `runpod.serverless.start` takes."""
        return {
            "handler": self.streaming_handler if streaming else self.handler,
            "concurrency_modifier": self.concurrency_modifier,
            "return_aggregate_stream": True,  # /run and /runsync of a streaming worker get the items as a list
        }
