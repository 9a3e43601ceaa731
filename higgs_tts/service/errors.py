"""Every error a caller can see: its code, its HTTP status, and how exceptions become one.

A failed job answers `{"success": false, "error", "error_code", "error_field"?}`; the HTTP
server sends the same code with the status below. Nothing else decides either.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

from ..core.checkpoint import CheckpointError
from ..core.voices import VoiceError
from ..synthesis.generator import EngineBusy, free_memory
from ..synthesis.synthesizer import Cancelled

log = logging.getLogger(__name__)

# error code -> HTTP status
STATUS = {
    "invalid_input": 400,
    "unknown_voice": 400,
    "too_long": 400,
    "too_large": 413,
    "voice_exists": 409,
    "voice_not_found": 404,
    "result_too_large": 413,
    "cancelled": 409,
    "out_of_memory": 503,
    "model_unavailable": 503,
    "busy": 503,
    "storage_full": 507,  # the voices folder's disk is full: nothing was written, the old voice stays
    "storage_error": 503,  # the voices folder cannot be written (permissions, a read-only volume)
    "internal_error": 500,
}


class InputError(ValueError):
    """A request that breaks a rule; `field` names the offending input field."""

    def __init__(self, message: str, field: str | None = None, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.field = field
        self.code = code


class JobError(RuntimeError):
    """A job that failed for a reason the caller should see (not their input)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Failure:
    message: str
    code: str
    field: str | None = None
    suggestions: list | None = None

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 500)

    def response(self) -> dict:
        response = {"success": False, "error": self.message, "error_code": self.code}
        if self.field:
            response["error_field"] = self.field
        if self.suggestions is not None:
            response["voice_suggestions"] = self.suggestions
        return response


def describe_failure(exc: BaseException, job_id: str = "") -> Failure:
    """What the caller is told about a failed job (never a traceback)."""
    if isinstance(exc, InputError):
        return Failure(str(exc), exc.code, exc.field)
    if isinstance(exc, VoiceError):
        return Failure(f"ref_audio: {exc}", "unknown_voice", "ref_audio", exc.suggestions)
    if isinstance(exc, JobError):
        return Failure(str(exc), exc.code)
    log.error("job %s failed", job_id, exc_info=exc)
    return Failure(f"internal error ({type(exc).__name__}); the job was not completed", "internal_error")


def storage_failure(exc: OSError, where: str) -> JobError:
    """A failed write to `where` as the error the caller can act on: `storage_full` when the disk
    (or the user's quota) is full, else `storage_error`."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return JobError(f"{where} is full ({reason}); nothing was written: free space on its disk", "storage_full")
    return JobError(f"cannot write to {where} ({reason})", "storage_error")


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def as_job_error(exc: BaseException) -> BaseException:
    """Model, engine and GPU-memory failures as the JobError the caller can act on (memory is
    freed first); anything else as it is."""
    if isinstance(exc, CheckpointError):
        return JobError(f"model unavailable: {exc}", "model_unavailable")
    if isinstance(exc, EngineBusy):
        return JobError(str(exc), "busy")
    if isinstance(exc, Cancelled):
        return JobError("the job was cancelled", "cancelled")
    if isinstance(exc, RuntimeError | MemoryError) and _is_out_of_memory(exc):
        free_memory()
        return JobError(
            "out of GPU memory for this request; retry with a shorter text, chunk_method 'sentence' "
            "or fewer max_new_tokens",
            "out_of_memory",
        )
    return exc
