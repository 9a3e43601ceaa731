"""The speech service: one validated job in, the documented response out.

It adapts nothing to a transport: the RunPod handler and the HTTP server both call `handle`.
Errors come back as `{"success": False, "error": ...}` naming the field and the rule, never as a
traceback.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from ..core.audio import duration_seconds, time_stretch
from ..core.checkpoint import probe
from ..core.sampling import ChunkParams, SamplingParams
from ..core.sources import sources
from ..core.voices import Voice, VoiceError, VoiceExists
from ..settings import ServiceSettings, Settings
from ..synthesis.plan import NothingToSpeak, Plan
from ..synthesis.synthesizer import Progress, ReferenceClip, SynthesisRequest, SynthesisResult, Synthesizer
from . import formats
from .audit import AuditRecord
from .budget import Work, check_inline, check_work
from .errors import Failure, InputError, JobError, as_job_error, describe_failure, storage_failure
from .events import Audio, ChunkEnd, Done, Final, JobEvent, SynthesisEvent
from .outcome import Outcome
from .references import fetched_reference, reference_audio
from .schema import AddVoiceInput, GenerateInput, chunked_when_long, parse_input
from .storage import S3Storage, S3Target, StorageError, generated_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedJob:
    """A generation job, checked and planned once (no work done): what synthesis gets, its plan, its work."""

    synthesis: SynthesisRequest
    plan: Plan
    work: Work


@dataclass(frozen=True)
class RenderedAudio:
    """Generated audio, encoded in the requested format."""

    data: bytes
    content_type: str
    result: SynthesisResult


class SpeechService:
    def __init__(
        self,
        settings: Settings | None = None,
        service: ServiceSettings | None = None,
        synthesizer: Synthesizer | None = None,
        storage: S3Storage | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.service = service or ServiceSettings.from_env()
        self.synthesizer = synthesizer or Synthesizer(self.settings)
        self.storage = storage or S3Storage(presign_seconds=self.service.presign_seconds,
                                            endpoint_url=self.service.s3_endpoint_url, region=self.service.s3_region)

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, raw: object, job_id: str = "local", s3_config: dict | None = None,
               cancel: threading.Event | None = None, progress: Progress | None = None,
               outcome: Outcome | None = None) -> dict:
        """Run one job; always returns a response dict (never raises for a job's failure).
        Setting `cancel` stops its generation and frees its engine slot; `progress` is told
        (chunks done, chunks in all, audio seconds so far) after each chunk. The job's audit line
        (and the metrics, when the caller's `outcome` keeps them) are written when it ends."""
        outcome = self._outcome(outcome, job_id, raw)
        started = outcome.started
        try:
            request = parse_input(raw)
            outcome.audit.action = request.action
            if request.action == "health":
                response = self.health()
            elif request.action == "list_voices":
                response = self.list_voices()
            elif request.action == "add_voice":
                response = self.add_voice(request)
            elif request.action == "get_voice":
                response = self.get_voice(request.voice_name)
            elif request.action == "delete_voice":
                response = self.delete_voice(request.voice_name)
            elif request.stream:
                raise InputError(
                    "stream: this worker returns whole responses; streaming needs a worker started with "
                    "STREAMING=1, read through RunPod's /stream endpoint",
                    "stream",
                )
            else:
                response = self.generate(request, s3_config, started, cancel, progress)
            outcome.succeeded(response)
            return response
        except Exception as exc:  # the worker must survive anything one job does
            failure = self.describe_failure(exc, job_id)
            outcome.failed(failure)
            return failure.response()
        finally:
            outcome.emit()

    @staticmethod
    def _outcome(outcome: Outcome | None, job_id: str, raw: object) -> Outcome:
        """The caller's outcome (given its audit record when it has none), or one that audits only."""
        outcome = outcome or Outcome()
        if outcome.audit is None:
            outcome.audit = AuditRecord(job_id=job_id, raw=raw)
        return outcome

    @staticmethod
    def describe_failure(exc: BaseException, job_id: str = "") -> Failure:
        """What the caller is told about a failed job (never a traceback)."""
        return describe_failure(exc, job_id)

    # -- actions -------------------------------------------------------------------------------

    def health(self) -> dict:
        loaded = self.synthesizer.loaded_model()
        voices_dir = self.settings.voice_prompts_path
        if loaded is not None:
            status, device = "healthy", str(loaded.device)
        else:
            status, device = probe(self.settings), self.settings.device or self._default_device()
        return {
            "success": True,
            "status": status,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_info": {
                "model_path": self.settings.model_path,
                "device": device,
                "models_loaded": loaded is not None,
                # where the model and the codec load from: {"origin": folder, volume, runpod-cache,
                # hf-cache or download (not on this machine yet), "path"}
                "model_source": {kind: source.describe() for kind, source in sources(self.settings).items()},
                # how many voices can be cloned from a clip (the others are only described)
                "voice_prompts_available": sum(v.kind == "clone" for v in self.synthesizer.voices.list())
                if voices_dir.is_dir() else 0,
                # the fast engine's slots and queue, and why ("ENGINE_SLOTS", or the free memory it
                # was sized from); null before the engine starts, or with ENGINE=generate
                "engine": self.synthesizer.engine_size(),
            },
            "voice_suggestions": self.synthesizer.voices.suggestions(),
        }

    @staticmethod
    def _default_device() -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def list_voices(self) -> dict:
        voices = self.synthesizer.voices.list()
        return {
            "success": True,
            "voices": [{"name": v.name, "kind": v.kind, "description": v.description} for v in voices],
            "voice_suggestions": [{"name": v.name, "description": v.description} for v in voices],
        }

    def _reference_audio(self, encoded: str, field: str) -> np.ndarray:
        return reference_audio(encoded, field, self.service.max_reference_bytes, self.service.max_reference_seconds)

    def _sent_reference(self, request: GenerateInput | AddVoiceInput) -> np.ndarray | None:
        """The job's own reference clip at 24 kHz, from `ref_audio_base64` or `ref_audio_url`; None without one."""
        if request.ref_audio_base64 and request.ref_audio_url:
            raise InputError("ref_audio_url: send either ref_audio_base64 or ref_audio_url, not both", "ref_audio_url")
        if request.ref_audio_base64:
            return self._reference_audio(request.ref_audio_base64, "ref_audio_base64")
        if request.ref_audio_url:
            return fetched_reference(request.ref_audio_url, "ref_audio_url", self.service.ref_audio_url_allowlist,
                                     self.service.max_reference_bytes, self.service.max_reference_seconds,
                                     self.service.ref_audio_url_timeout)
        return None

    def add_voice(self, request: AddVoiceInput) -> dict:
        if request.ref_audio_base64 is None and not request.ref_audio_url:
            raise InputError("ref_audio_base64: add_voice needs the voice's clip, in ref_audio_base64 or by "
                             "ref_audio_url", "ref_audio_base64")
        audio = (self._sent_reference(request) if request.ref_audio_url  # an empty upload is an empty clip
                 else self._reference_audio(request.ref_audio_base64, "ref_audio_base64"))
        return self.store_voice(request.voice_name, audio, request.ref_audio_transcript, request.overwrite,
                                request.description)

    def store_voice(self, name: str, audio: np.ndarray, transcript: str, overwrite: bool = False,
                    description: str | None = None) -> dict:
        """Add a checked 24 kHz reference as a named voice (the add_voice action; HTTP uploads run that
        action through handle(), so they get its validation and audit line)."""
        library = self.synthesizer.voices
        try:
            voice = library.add(name, audio, transcript, overwrite, description)
        except VoiceExists as exc:
            raise InputError(f"voice_name: {exc}", "voice_name", "voice_exists") from None
        except OSError as exc:
            raise storage_failure(exc, "the voices folder") from None
        return {
            "success": True,
            "voice": self._voice_fields(voice),
            "duration_seconds": round(duration_seconds(audio), 3),
            "voice_suggestions": library.suggestions(),
        }

    @staticmethod
    def _voice_fields(voice: Voice) -> dict:
        return {"name": voice.name, "kind": voice.kind, "description": voice.description}

    def get_voice(self, name: str) -> dict:
        """One voice: name, kind, description; a clone's transcript and duration too."""
        try:
            voice = self.synthesizer.voices.get(name)
        except VoiceError as exc:
            raise InputError(f"voice_name: {exc}", "voice_name", "voice_not_found") from None
        fields = self._voice_fields(voice)
        if voice.kind == "clone":
            fields.update(transcript=voice.transcript, duration_seconds=round(duration_seconds(voice.load_audio()), 3))
        return {"success": True, "voice": fields}

    def delete_voice(self, name: str) -> dict:
        """Remove a stored voice's files and every code cached from its audio."""
        try:
            voice, audio = self.synthesizer.voices.delete(name)
        except VoiceError as exc:
            raise InputError(f"voice_name: {exc}", "voice_name", "voice_not_found") from None
        except OSError as exc:
            raise storage_failure(exc, "the voices folder") from None
        if audio is not None:
            self.synthesizer.forget_reference(audio)
        library = self.synthesizer.voices
        return {"success": True, "deleted": voice.name, "voice_suggestions": library.suggestions()}

    # -- generation ----------------------------------------------------------------------------

    def plan(self, request: GenerateInput) -> PlannedJob:
        """The job's synthesis request, plan and work, every input and the work budget checked (no work
        done). Made once per job: everything after reads it."""
        if len(request.transcript) > self.service.max_transcript_chars:
            raise InputError(
                f"transcript: {len(request.transcript)} characters is above the limit of "
                f"{self.service.max_transcript_chars}; split the text or raise MAX_TRANSCRIPT_CHARS",
                "transcript", "too_long",
            )
        if request.ref_audio_transcript and not (request.ref_audio_base64 or request.ref_audio_url):
            raise InputError("ref_audio_transcript: needs ref_audio_base64 or ref_audio_url", "ref_audio_transcript")
        audio = self._sent_reference(request)
        reference = None if audio is None else ReferenceClip(audio=audio, transcript=request.ref_audio_transcript)
        chunked = chunked_when_long(request)
        automatic, request = chunked is not request, chunked
        synthesis = SynthesisRequest(
            text=request.transcript, voices=request.ref_audio, scene=request.scene_prompt,
            chunk_method=request.chunk_method, ref_audio_in_system_message=request.ref_audio_in_system_message,
            sampling=SamplingParams.from_fields(request), seed=request.seed, reference=reference,
            **ChunkParams.values_from(request),
        )
        try:
            plan = self.synthesizer.plan(synthesis)  # unknown voices fail here, before any work
        except NothingToSpeak:
            raise InputError("transcript: has nothing to speak after normalization", "transcript") from None
        work = check_work(list(plan.chunks), request.max_new_tokens, request.chunk_method, self.service, automatic)
        return PlannedJob(synthesis, plan, work)

    def _synthesize(self, job: PlannedJob, cancel: threading.Event | None = None,
                    progress: Progress | None = None) -> SynthesisResult:
        try:
            return self.synthesizer.synthesize(job.synthesis, cancel, progress, plan=job.plan)
        except Exception as exc:
            raise as_job_error(exc) from None

    def _s3_target(self, request: GenerateInput, s3_config: dict | None) -> S3Target | None:
        if s3_config and (request.s3_bucket or s3_config.get("bucketName")):
            return S3Target.from_runpod(s3_config, request.s3_bucket)
        bucket = request.s3_bucket or self.service.default_bucket
        return S3Target(bucket=bucket) if bucket else None

    def open_stream(self, request: GenerateInput, cancel: threading.Event | None = None) -> Iterator[SynthesisEvent]:
        """Synthesizer.stream's events: Audio and ChunkEnd while generating, then Done with the result.

        Every input check runs here, before the first chunk, so a bad request fails before any
        bytes are sent. Setting `cancel` (the listener is gone) ends generation at its next step.
        """
        job = self.plan(request)
        return self._streamed(self.synthesizer.stream(job.synthesis, cancel=cancel, plan=job.plan))

    @staticmethod
    def _streamed(stream: Iterator[SynthesisEvent]) -> Iterator[SynthesisEvent]:
        try:
            yield from stream
        except Exception as exc:
            raise as_job_error(exc) from None

    def render(self, request: GenerateInput, cancel: threading.Event | None = None,
               progress: Progress | None = None, job: PlannedJob | None = None) -> RenderedAudio:
        """Synthesize and encode, without delivery (the HTTP server streams the bytes itself)."""
        result = self._synthesize(job or self.plan(request), cancel, progress)
        if request.speed != 1.0:
            result = dataclasses.replace(result, audio=time_stretch(result.audio, request.speed, result.sample_rate))
        data = formats.encode(result.audio, result.sample_rate, request.output_format)
        return RenderedAudio(data=data, content_type=formats.content_type(request.output_format), result=result)

    def generate(self, request: GenerateInput, s3_config: dict | None = None, started: float | None = None,
                 cancel: threading.Event | None = None, progress: Progress | None = None) -> dict:
        started = started if started is not None else time.perf_counter()
        job = self.plan(request)
        if self._s3_target(request, s3_config) is None:  # a result that cannot fit inline fails before any work
            check_inline(job.work, request.output_format, request.speed, self.service.max_inline_audio_bytes)
        rendered = self.render(request, cancel, progress, job)
        first_audio = time.perf_counter() - started  # a whole response: the audio is ready all at once
        response: dict = {"success": True}
        upload_seconds = self._deliver(response, request, rendered.data, rendered.content_type, s3_config,
                                       inline=True)
        response.update(self._result_fields(request, rendered.result, started, upload_seconds, first_audio))
        return response

    def _deliver(self, response: dict, request: GenerateInput, data: bytes, content_type: str,
                 s3_config: dict | None, inline: bool) -> float:
        """Upload to S3 when a bucket is set, else (or when the upload fails) put the audio inline
        if `inline`; the fields go into `response`. Returns the upload's seconds."""
        target = self._s3_target(request, s3_config)
        if target is not None:
            key = request.s3_key or generated_key(formats.extension(request.output_format))
            try:
                upload = self.storage.upload(target, key, data, content_type)
                response.update(audio_url=upload.url, presigned_url=upload.presigned_url,
                                s3_bucket=upload.bucket, s3_key=upload.key)
                return upload.seconds
            except StorageError as exc:
                # Keep the audio: hand it back inline when it fits, and say what failed.
                log.warning("upload failed: %s", exc)
                response["s3_upload_error"] = str(exc)
        if inline:
            if len(data) > self.service.max_inline_audio_bytes:
                reason = response.get("s3_upload_error", "no s3_bucket was given")
                raise JobError(
                    f"audio is {len(data) / 1e6:.1f} MB as {request.output_format}, above the "
                    f"{self.service.max_inline_audio_bytes / 1e6:.1f} MB that fits in a response ({reason}); "
                    "set s3_bucket, use output_format 'mp3' or 'opus', or stream the job",
                    "result_too_large",
                )
            response["audio_base64"] = base64.b64encode(data).decode("ascii")
        return 0.0

    def _result_fields(self, request: GenerateInput, result: SynthesisResult, started: float,
                       upload_seconds: float, first_audio: float) -> dict:
        """The documented description of a finished generation: format, metadata and timings."""
        audio_seconds = result.duration_seconds
        compute_seconds = result.generation_seconds + result.decode_seconds
        voices = [{"name": name, "kind": kind} for name, kind in zip(result.voices, result.voice_kinds, strict=True)]
        return dict(
            content_type=formats.content_type(request.output_format),
            output_format=request.output_format,
            duration_seconds=round(audio_seconds, 3),
            sample_rate=result.sample_rate,
            text_output=result.text,
            metadata={
                "model_used": self.settings.model_path,
                # the voices cloned from a clip, "belinda" or "belinda,chadwick"; null when none was
                "voice_clone": ",".join(v["name"] for v in voices if v["kind"] == "clone") or None,
                "voices": voices,  # every voice in speaker order, with its kind: "clone" or "described"
                "generation_parameters": {
                    "temperature": request.temperature,
                    "top_k": request.top_k,
                    "top_p": request.top_p,
                    "max_new_tokens": request.max_new_tokens,
                    "seed": result.seed,
                    "generation_time": round(result.generation_seconds, 3),
                    "chunks_processed": len(result.chunks),
                },
                "time_to_first_audio": round(first_audio, 3),
            },
            generation_metrics={
                "total_request_time": round(time.perf_counter() - started, 3),
                "model_loading_time": round(result.model_load_seconds, 3),
                "generation_time": round(result.generation_seconds, 3),
                "decode_time": round(result.decode_seconds, 3),
                "s3_upload_time": round(upload_seconds, 3),
                "audio_duration": round(audio_seconds, 3),
                "chunks_processed": len(result.chunks),
                # compute seconds per second of audio: below 1 is faster than real time
                "real_time_factor": round(compute_seconds / audio_seconds, 4) if audio_seconds else None,
                "time_to_first_audio": round(first_audio, 3),
            },
            voice_suggestions=self.synthesizer.voices.suggestions(),
        )

    # -- streamed jobs ---------------------------------------------------------------------------

    def stream(self, raw: object, job_id: str = "local", s3_config: dict | None = None,
               cancel: threading.Event | None = None, outcome: Outcome | None = None) -> Iterator[JobEvent]:
        """A `stream: true` job: Audio and ChunkEnd while generating, then Final with the response (with the S3
        URL when uploading) or, on a failure, the failure response. The transport decides how each
        goes on the wire (RunPod items: `delivery/runpod.py`). Audited (and counted) as `handle`."""
        outcome = self._outcome(outcome, job_id, raw)
        started = outcome.started
        items: Iterator | None = None
        try:
            request = parse_input(raw)
            if not isinstance(request, GenerateInput):
                raise InputError(f"stream: only generation streams, not action {request.action!r}", "stream")
            if request.speed != 1.0:
                raise InputError("speed: must be 1.0 when stream is true (speed changes need the whole clip)",
                                 "speed")
            items = self.open_stream(request, cancel)
            for event in items:
                match event:
                    case Audio() | ChunkEnd():
                        yield event
                    case Done(result):
                        break
            first_audio = result.first_audio_seconds if result.first_audio_seconds is not None else 0.0
            response: dict = {"success": True}
            upload_seconds = 0.0
            if self._s3_target(request, s3_config) is not None:  # the whole clip, in output_format
                data = formats.encode(result.audio, result.sample_rate, request.output_format)
                upload_seconds = self._deliver(response, request, data, formats.content_type(request.output_format),
                                               s3_config, inline=False)  # the audio already went out
            response.update(self._result_fields(request, result, started, upload_seconds, first_audio))
            outcome.succeeded(response)
            outcome.note(delivery="stream" + ("+s3" if "audio_url" in response else ""))
            yield Final(response)
        except Exception as exc:
            failure = describe_failure(exc, job_id)
            outcome.failed(failure)
            yield Final(failure.response())
        finally:
            if items is not None:
                items.close()
            outcome.emit()  # closed before its end (the reader left): `cancelled`
