"""One structured JSON line per job: what ran and how it ended, never what was said."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

log = logging.getLogger("higgs_tts.audit")


def fingerprint(text: str) -> str:
    """A short hash that links repeated transcripts without revealing them."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]  # any str, even invalid Unicode


@dataclass
class AuditRecord:
    """A job's line: status `ok`, `error` (with its error_code) or `cancelled` (stopped, or its
    caller went away), logged once when the job ends."""

    job_id: str
    raw: object = None
    action: str = "generate"
    status: str = "running"
    error_code: str | None = None
    facts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        raw = self.raw if isinstance(self.raw, dict) else {}
        self.raw = None  # keep no reference to the inputs
        if isinstance(raw.get("action"), str):
            self.action = raw["action"][:32]
        transcript = raw.get("transcript")
        if isinstance(transcript, str):
            self.facts.update(transcript_chars=len(transcript), transcript_sha256=fingerprint(transcript))
        for key in ("ref_audio", "voice_name", "output_format"):
            if isinstance(raw.get(key), str):
                self.facts[key] = raw[key][:200]
        self.facts["ref_audio_base64"] = bool(raw.get("ref_audio_base64"))

    def succeed(self, response: dict) -> None:
        self.status = "ok"
        metrics = response.get("generation_metrics") or {}
        for key in ("audio_duration", "generation_time", "model_loading_time", "s3_upload_time"):
            if key in metrics:
                self.facts[key] = metrics[key]
        if "audio_url" in response:
            self.facts["delivery"] = "s3"
        elif "audio_base64" in response:
            self.facts["delivery"] = "inline"
        if "s3_upload_error" in response:
            self.facts["s3_upload_failed"] = True

    def fail(self, code: str) -> None:
        self.status, self.error_code = ("cancelled" if code == "cancelled" else "error"), code

    def emit(self, seconds: float) -> None:
        """Log the line; one still `running` is ended by its caller going away (its stream was
        closed mid-way), so it is logged `cancelled`: every job's line has a final status."""
        if self.status == "running":
            self.fail("cancelled")
        record = {
            "event": "job",
            "job_id": self.job_id,
            "action": self.action,
            "status": self.status,
            "error_code": self.error_code,
            "duration_s": round(seconds, 3),
            **self.facts,
        }
        log.info(json.dumps(record, sort_keys=True))
