"""The speech service: one validated job in, the documented response out.

It adapts nothing to a transport: the RunPod handler and the HTTP server both call `handle`.
Errors come back as `{"success": False, "error": ...}` naming the field and the rule, never as a
traceback.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..core.audio import (
    SAMPLE_RATE,
    AudioError,
    AudioTooLong,
    duration_seconds,
    read_audio,
    time_stretch,
    write_audio,
)
from ..core.checkpoint import (
    CheckpointError,
    check_codec_format,
    check_model_format,
    pick_device,
    resolve_path,
    unavailable_reason,
)
from ..core.generation import SamplingParams
from ..core.synthesizer import Cancelled, ReferenceClip, SynthesisRequest, SynthesisResult, Synthesizer
from ..core.text import normalize_transcript
from ..core.voices import AUDIO_SUFFIXES, VoiceError
from ..engine.scheduler import EngineBusy
from ..settings import ServiceSettings, Settings
from . import formats
from .audit import AuditRecord
from .schema import AddVoiceInput, GenerateInput, InputError, decode_base64, parse_input
from .storage import S3Storage, S3Target, StorageError, generated_key

log = logging.getLogger(__name__)

STREAM_ITEM_SECONDS = 5.0  # per RunPod stream item: 240 KB of PCM, 320 KB as base64


class JobError(RuntimeError):
    """A job that failed for a reason the caller should see (not their input)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_accelerator_memory() -> None:
    import gc

    from ..engine.graphs import free_cached_memory

    gc.collect()
    free_cached_memory()


@dataclass(frozen=True)
class Failure:
    message: str
    code: str
    field: str | None = None
    suggestions: list | None = None

    def response(self) -> dict:
        response = {"success": False, "error": self.message, "error_code": self.code}
        if self.field:
            response["error_field"] = self.field
        if self.suggestions is not None:
            response["voice_suggestions"] = self.suggestions
        return response


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
        self.storage = storage or S3Storage(presign_seconds=self.service.presign_seconds)

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, raw: object, job_id: str = "local", s3_config: dict | None = None,
               cancel: threading.Event | None = None) -> dict:
        """Run one job; always returns a response dict (never raises for a job's failure).
        Setting `cancel` stops its generation and frees its engine slot."""
        started = time.perf_counter()
        audit = AuditRecord(job_id=job_id, raw=raw)
        try:
            request = parse_input(raw)
            audit.action = request.action
            if request.action == "health":
                response = self.health()
            elif request.action == "list_voices":
                response = self.list_voices()
            elif request.action == "add_voice":
                response = self.add_voice(request)
            elif request.stream:
                raise InputError(
                    "stream: this worker returns whole responses; streaming needs a worker started with "
                    "STREAMING=1, read through RunPod's /stream endpoint",
                    "stream",
                )
            else:
                response = self.generate(request, s3_config, started, cancel)
            audit.succeed(response)
            return response
        except Exception as exc:  # the worker must survive anything one job does
            failure = self.describe_failure(exc, job_id)
            audit.fail(failure.code)
            return failure.response()
        finally:
            audit.emit(time.perf_counter() - started)

    @staticmethod
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

    # -- actions -------------------------------------------------------------------------------

    def health(self) -> dict:
        loaded = self.synthesizer.loaded_model()
        voices_dir = self.settings.voice_prompts_path
        if loaded is not None:
            status, device = "healthy", str(loaded.device)
        else:
            status, device = self._loadable(), self.settings.device or self._default_device()
        return {
            "success": True,
            "status": status,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_info": {
                "model_path": self.settings.model_path,
                "device": device,
                "models_loaded": loaded is not None,
                "voice_prompts_available": voices_dir.is_dir() and any(
                    p.suffix.lower() in AUDIO_SUFFIXES for p in voices_dir.iterdir()
                ),
            },
            "voice_suggestions": self.synthesizer.voices.suggestions(),
        }

    @staticmethod
    def _default_device() -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _loadable(self) -> str:
        """'healthy' when the checkpoint can be loaded without downloading, is in the native
        layout, and the device exists; else the reason."""
        for label, path, revision, check in (
            ("model", self.settings.model_path, self.settings.model_revision, check_model_format),
            ("tokenizer", self.settings.tokenizer_path, self.settings.tokenizer_revision, check_codec_format),
        ):
            reason = unavailable_reason(path, revision)
            if reason:
                return f"unhealthy: {label} {reason}"
            try:
                check(resolve_path(path, revision))
            except CheckpointError as exc:
                return f"unhealthy: {label}: {exc}"
        try:
            pick_device(self.settings.device)
        except CheckpointError as exc:
            return f"unhealthy: {exc}"
        return "healthy"

    def list_voices(self) -> dict:
        voices = self.synthesizer.voices.list()
        return {
            "success": True,
            "voices": [{"name": v.name, "kind": v.kind, "description": v.description} for v in voices],
            "voice_suggestions": [{"name": v.name, "description": v.description} for v in voices],
        }

    def _reference_audio(self, encoded: str, field: str) -> np.ndarray:
        data = decode_base64(encoded, field, self.service.max_reference_bytes)
        limit = self.service.max_reference_seconds
        try:
            audio = read_audio(data, max_seconds=limit)
        except AudioTooLong as exc:
            raise InputError(f"{field}: {exc}", field, "too_long") from None
        except AudioError as exc:
            raise InputError(f"{field}: {exc} (send WAV, FLAC, MP3 or OGG)", field) from None
        seconds = duration_seconds(audio)
        if seconds > limit + 0.5:  # a header that understated the length
            raise InputError(f"{field}: audio is {seconds:.1f} s long; the limit is {limit:g} s", field, "too_long")
        if seconds < 0.5:
            raise InputError(f"{field}: audio is {seconds:.2f} s long; at least 0.5 s is needed", field)
        return audio

    def add_voice(self, request: AddVoiceInput) -> dict:
        library = self.synthesizer.voices
        root = library.root
        name = request.voice_name
        audio = self._reference_audio(request.ref_audio_base64, "ref_audio_base64")
        existing = [root / f"{name}{s}" for s in AUDIO_SUFFIXES if (root / f"{name}{s}").exists()]
        if existing and not request.overwrite:
            raise InputError(
                f"voice_name: voice {name!r} already exists; set overwrite to true to replace it",
                "voice_name", "voice_exists",
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
            for path in existing:
                path.unlink()
            self._atomic_write(root, f"{name}.txt", lambda p: p.write_text(request.ref_audio_transcript.strip() + "\n"))
            self._atomic_write(root, f"{name}.wav", lambda p: write_audio(p, audio))
        except OSError as exc:
            raise JobError(f"cannot write to the voices folder ({exc.strerror or type(exc).__name__})",
                           "storage_error") from None
        voice = library.get(name)
        return {
            "success": True,
            "voice": {"name": voice.name, "kind": voice.kind, "description": voice.description},
            "duration_seconds": round(duration_seconds(audio), 3),
            "voice_suggestions": library.suggestions(),
        }

    @staticmethod
    def _atomic_write(folder: Path, filename: str, write) -> None:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=Path(filename).suffix)
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, folder / filename)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # -- generation ----------------------------------------------------------------------------

    def _synthesis_request(self, request: GenerateInput) -> SynthesisRequest:
        if len(request.transcript) > self.service.max_transcript_chars:
            raise InputError(
                f"transcript: {len(request.transcript)} characters is above the limit of "
                f"{self.service.max_transcript_chars}; split the text or raise MAX_TRANSCRIPT_CHARS",
                "transcript", "too_long",
            )
        if not normalize_transcript(request.transcript):
            raise InputError("transcript: has nothing to speak after normalization", "transcript")
        if request.ref_audio_transcript and not request.ref_audio_base64:
            raise InputError("ref_audio_transcript: needs ref_audio_base64", "ref_audio_transcript")
        reference = None
        if request.ref_audio_base64:
            audio = self._reference_audio(request.ref_audio_base64, "ref_audio_base64")
            reference = ReferenceClip(audio=audio, transcript=request.ref_audio_transcript)
        self.synthesizer.voices.resolve(request.ref_audio)  # unknown names fail before any work
        return SynthesisRequest(
            text=request.transcript,
            voices=request.ref_audio,
            scene=request.scene_prompt,
            chunk_method=request.chunk_method,
            chunk_max_word_num=request.chunk_max_word_num,
            chunk_max_num_turns=request.chunk_max_num_turns,
            generation_chunk_buffer_size=request.generation_chunk_buffer_size,
            ref_audio_in_system_message=request.ref_audio_in_system_message,
            sampling=SamplingParams.from_fields(request),
            seed=request.seed,
            reference=reference,
        )

    def _synthesize(self, request: SynthesisRequest, cancel: threading.Event | None = None) -> SynthesisResult:
        with self._job_errors():
            return self.synthesizer.synthesize(request, cancel)

    @staticmethod
    @contextmanager
    def _job_errors():
        """Model and GPU-memory failures as JobErrors the caller can act on (memory freed first)."""
        try:
            yield
        except CheckpointError as exc:
            raise JobError(f"model unavailable: {exc}", "model_unavailable") from None
        except EngineBusy as exc:
            raise JobError(str(exc), "busy") from None
        except Cancelled:
            raise JobError("the job was cancelled", "cancelled") from None
        except (RuntimeError, MemoryError) as exc:
            if not _is_out_of_memory(exc):
                raise
            _free_accelerator_memory()
            raise JobError(
                "out of GPU memory for this request; retry with a shorter text, chunk_method 'sentence' "
                "or fewer max_new_tokens",
                "out_of_memory",
            ) from None

    def _s3_target(self, request: GenerateInput, s3_config: dict | None) -> S3Target | None:
        if s3_config and (request.s3_bucket or s3_config.get("bucketName")):
            return S3Target.from_runpod(s3_config, request.s3_bucket)
        bucket = request.s3_bucket or self.service.default_bucket
        return S3Target(bucket=bucket) if bucket else None

    def open_stream(self, request: GenerateInput) -> Iterator:
        """Audio chunks while generating, then the SynthesisResult (see Synthesizer.stream).

        Every input check runs here, before the first chunk, so a bad request fails before any
        bytes are sent.
        """
        return self._streamed(self.synthesizer.stream(self._synthesis_request(request)))

    def _streamed(self, stream: Iterator) -> Iterator:
        with self._job_errors():
            yield from stream

    def render(self, request: GenerateInput, cancel: threading.Event | None = None) -> RenderedAudio:
        """Synthesize and encode, without delivery (the HTTP server streams the bytes itself)."""
        result = self._synthesize(self._synthesis_request(request), cancel)
        if request.speed != 1.0:
            result = dataclasses.replace(result, audio=time_stretch(result.audio, request.speed, result.sample_rate))
        data = formats.encode(result.audio, result.sample_rate, request.output_format)
        return RenderedAudio(data=data, content_type=formats.content_type(request.output_format), result=result)

    def generate(self, request: GenerateInput, s3_config: dict | None = None, started: float | None = None,
                 cancel: threading.Event | None = None) -> dict:
        started = started if started is not None else time.perf_counter()
        rendered = self.render(request, cancel)
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
        return dict(
            content_type=formats.content_type(request.output_format),
            output_format=request.output_format,
            duration_seconds=round(audio_seconds, 3),
            sample_rate=result.sample_rate,
            text_output=result.text,
            metadata={
                "model_used": self.settings.model_path,
                "voice_clone": result.voices or None,
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

    # -- RunPod streaming ----------------------------------------------------------------------

    def stream_job(self, raw: object, job_id: str = "local", s3_config: dict | None = None) -> Iterator[dict]:
        """RunPod's streaming contract. A job with `stream: true` yields audio items while it is
        generated, then a final item with the usual response fields (and the S3 URL when
        uploading); a failure ends the stream with an error item. Any other job yields exactly its
        `handle` response.

        Audio items: {"type": "audio", "seq", "audio_base64" (16-bit little-endian mono PCM),
        "format": "pcm", "sample_rate", "num_samples", "start_seconds"}, each at most
        STREAM_ITEM_SECONDS long (about 320 KB of base64, well under RunPod's 1 MB item limit).
        """
        if not (isinstance(raw, dict) and raw.get("stream") is True):
            yield self.handle(raw, job_id, s3_config)
            return
        started = time.perf_counter()
        audit = AuditRecord(job_id=job_id, raw=raw)
        seq = 0
        items: Iterator | None = None
        try:
            request = parse_input(raw)
            if request.speed != 1.0:
                raise InputError("speed: must be 1.0 when stream is true (speed changes need the whole clip)",
                                 "speed")
            items = self.open_stream(request)
            sent = 0
            for item in items:
                if not isinstance(item, np.ndarray):
                    result = item
                    break
                for piece in formats.pieces(item, int(STREAM_ITEM_SECONDS * SAMPLE_RATE)):
                    yield {"type": "audio", "seq": seq, "audio_base64": base64.b64encode(formats.to_pcm16(piece))
                           .decode("ascii"), "format": "pcm", "sample_rate": SAMPLE_RATE,
                           "num_samples": len(piece), "start_seconds": round(sent / SAMPLE_RATE, 3)}
                    seq, sent = seq + 1, sent + len(piece)
            first_audio = result.first_audio_seconds if result.first_audio_seconds is not None else 0.0
            response: dict = {"success": True, "type": "final", "seq": seq, "audio_items": seq}
            upload_seconds = 0.0
            if self._s3_target(request, s3_config) is not None:  # the whole clip, in output_format
                data = formats.encode(result.audio, result.sample_rate, request.output_format)
                upload_seconds = self._deliver(response, request, data, formats.content_type(request.output_format),
                                               s3_config, inline=False)  # the audio already went out
            response.update(self._result_fields(request, result, started, upload_seconds, first_audio))
            audit.succeed(response)
            audit.facts["delivery"] = "stream" + ("+s3" if "audio_url" in response else "")
            yield response
        except Exception as exc:
            failure = self.describe_failure(exc, job_id)
            audit.fail(failure.code)
            yield {**failure.response(), "type": "error", "seq": seq}
        finally:
            if items is not None:
                items.close()
            audit.emit(time.perf_counter() - started)
