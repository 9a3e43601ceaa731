"""Configuration from environment variables, read in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"
DEFAULT_TOKENIZER = "bosonai/higgs-audio-v2-tokenizer"
DEFAULT_REVISION = "main"  # of either repo, unless MODEL_REVISION / TOKENIZER_REVISION say otherwise
DEFAULT_VOICE_PROMPTS = "voice_prompts"
# The decode paths: "fast", our engine (engine/); "generate", transformers' generate(); "auto", fast (CPU and CUDA).
ENGINES = ("auto", "fast", "generate")
ENGINE_ALIASES = {"reference": "generate"}  # earlier names, still accepted
# A repo id is looked for here before the Hugging Face cache (core/sources.py): the network volume's
# copies (scripts/setup-network-volume.sh), then RunPod's cached models (an HF cache, endpoint's "Model").
MODELS_DIR = Path("/runpod-volume/models")
RUNPOD_MODEL_CACHE = Path("/runpod-volume/huggingface-cache/hub")
WYOMING_URI = "tcp://0.0.0.0:10200"  # where Home Assistant looks for a Wyoming TTS server (wyoming-piper's port)
WYOMING_LANGUAGES = ("en", "zh")  # the languages of the voice library's clips


def _optional(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _number(name: str, default: float, kind: type = int) -> float:
    value = _optional(name)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a {kind.__name__}; got {value!r}") from None


def _number_or_auto(name: str) -> int | None:
    """A count that is automatic when unset or "auto" (None)."""
    value = _optional(name)
    return None if value is None or value.lower() == "auto" else _number(name, None)


def _folder(name: str, default: Path) -> Path | None:
    """A folder setting: unset for `default`, "off" for none."""
    value = _optional(name)
    if value is None:
        return default
    return None if value.lower() == "off" else Path(value)


def _voice_cache_dir() -> Path | None:
    """VOICE_CACHE_DIR, "off" for none; by default on the network volume when one is mounted."""
    value = _optional("VOICE_CACHE_DIR")
    if value is not None:
        return None if value.lower() == "off" else Path(value)
    volume = Path("/runpod-volume")
    base = volume / "cache" if volume.is_dir() else Path.home() / ".cache" / "higgs-tts"
    return base / "voice_codes"


def _list(name: str) -> tuple[str, ...]:
    """A comma-separated list, its items stripped (e.g. WYOMING_LANGUAGES=en,de)."""
    return tuple(item.strip() for item in (_optional(name) or "").split(",") if item.strip())


def _hosts(name: str) -> tuple[str, ...]:
    """A comma-separated list of host names, lower case (e.g. REF_AUDIO_URL_ALLOWLIST=a.example,127.0.0.1)."""
    return tuple(h.lower() for h in _list(name))


def _flag(name: str, default: bool = False) -> bool:
    value = _optional(name)
    return default if value is None else value.lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Where the model, codec and voices live, and where to run them.

    `device` and `dtype` of None mean automatic: CUDA with bf16 when available, else CPU with
    float32.
    """

    model_path: str = DEFAULT_MODEL
    tokenizer_path: str = DEFAULT_TOKENIZER
    model_revision: str = DEFAULT_REVISION
    tokenizer_revision: str = DEFAULT_REVISION
    models_dir: Path | None = MODELS_DIR  # NAME folders for repo ids (None: not looked for)
    runpod_model_cache: Path | None = RUNPOD_MODEL_CACHE  # RunPod's cached models (None: not looked for)
    voice_prompts_path: Path = field(default_factory=lambda: Path(DEFAULT_VOICE_PROMPTS))
    device: str | None = None
    dtype: str | None = None
    engine: str = "auto"  # one of ENGINES (or an alias, stored under its name in ENGINES)
    voice_cache_dir: Path | None = None  # codes of reference voices; None keeps them in memory only
    voice_cache_max_bytes: int = 512 * 2**20  # the on-disk cache's size; least recently used files go first
    # Continuous batching (fast engine): sequences decoded together, positions per sequence (prompt
    # plus max_new_tokens; the KV cache is slots x max_len, allocated once), requests allowed to wait.
    # None (unset or "auto"): sized when the engine starts, from the GPU's free memory (engine/sizing.py).
    engine_slots: int | None = None
    engine_max_len: int = 4096
    engine_queue: int | None = None
    # Prompt prefixes (a voice's system turn, reference audio and transcript) prefilled once and kept
    # for later requests, least recently used first beyond this many bytes of KV (0 turns it off).
    prefix_cache_max_bytes: int = 2**30
    # Earlier chunks' frames a chunk's prompt carries as context, at most: the oldest are dropped
    # beyond it, so a long text's prompts stop growing (about 5.5 minutes of speech).
    max_context_frames: int = 8192
    # glibc's threshold above which an allocation is its own mapping, returned to the system when freed
    # (core/memory.py). Fixed here: glibc raises it by itself after each large free (up to 32 MiB), and then
    # a long reference's tensors land in per-thread heaps, so the same request peaked anywhere from +65 to
    # +156 MB. 0 keeps glibc's own.
    malloc_mmap_threshold: int = 4 * 2**20

    def __post_init__(self) -> None:
        if self.engine not in (*ENGINES, *ENGINE_ALIASES):
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {self.engine!r}")
        object.__setattr__(self, "engine", ENGINE_ALIASES.get(self.engine, self.engine))
        for name in ("engine_slots", "engine_max_len", "engine_queue", "max_context_frames"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name.upper()} must be at least 1; got {getattr(self, name)}")
        if self.malloc_mmap_threshold < 0:
            raise ValueError(f"MALLOC_MMAP_THRESHOLD must be at least 0; got {self.malloc_mmap_threshold}")
        if self.prefix_cache_max_bytes < 0:
            raise ValueError(f"PREFIX_CACHE_MAX_BYTES must be at least 0; got {self.prefix_cache_max_bytes}")

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            model_path=_optional("MODEL_PATH") or cls.model_path,
            tokenizer_path=_optional("TOKENIZER_PATH") or cls.tokenizer_path,
            model_revision=_optional("MODEL_REVISION") or cls.model_revision,
            tokenizer_revision=_optional("TOKENIZER_REVISION") or cls.tokenizer_revision,
            models_dir=_folder("MODELS_DIR", MODELS_DIR),
            runpod_model_cache=_folder("RUNPOD_MODEL_CACHE", RUNPOD_MODEL_CACHE),
            voice_prompts_path=Path(_optional("VOICE_PROMPTS_PATH") or DEFAULT_VOICE_PROMPTS),
            device=_optional("DEVICE"),
            dtype=_optional("DTYPE"),
            engine=_optional("ENGINE") or cls.engine,
            voice_cache_dir=_voice_cache_dir(),
            voice_cache_max_bytes=_number("VOICE_CACHE_MAX_BYTES", cls.voice_cache_max_bytes),
            engine_slots=_number_or_auto("ENGINE_SLOTS"),
            engine_max_len=_number("ENGINE_MAX_LEN", cls.engine_max_len),
            engine_queue=_number_or_auto("ENGINE_QUEUE"),
            prefix_cache_max_bytes=_number("PREFIX_CACHE_MAX_BYTES", cls.prefix_cache_max_bytes),
            max_context_frames=_number("MAX_CONTEXT_FRAMES", cls.max_context_frames),
            malloc_mmap_threshold=_number("MALLOC_MMAP_THRESHOLD", cls.malloc_mmap_threshold),
        )


@dataclass(frozen=True)
class ServiceSettings:
    """Limits and delivery settings of the API (RunPod worker and HTTP server)."""

    max_transcript_chars: int = 20_000
    max_reference_bytes: int = 10 * 1024 * 1024
    max_reference_seconds: float = 60.0
    max_inline_audio_bytes: int = 14 * 1024 * 1024  # RunPod results above ~14 MB of audio do not fit
    # The work one generation may ask for, checked before any work (service/budget.py): its chunks,
    # and chunks x max_new_tokens frames (25 a second; 250,000 is 2.8 hours of audio).
    max_chunks: int = 200
    max_total_frames: int = 250_000
    presign_seconds: int = 3600
    default_bucket: str | None = None
    idle_cleanup_seconds: float = 300.0
    unload_after_idle: bool = False
    max_concurrency: int = 1
    s3_endpoint_url: str | None = None  # an S3-compatible store; None: AWS
    s3_region: str = "us-east-1"
    # ref_audio_url: hosts fetched even over plain http or at a private address, and the deadline
    ref_audio_url_allowlist: tuple[str, ...] = ()
    ref_audio_url_timeout: float = 20.0
    live_max_buffered_chars: int = 4000  # a live session's text not yet being spoken

    @classmethod
    def from_env(cls) -> ServiceSettings:
        return cls(
            max_transcript_chars=_number("MAX_TRANSCRIPT_CHARS", cls.max_transcript_chars),
            max_reference_bytes=_number("MAX_REFERENCE_BYTES", cls.max_reference_bytes),
            max_reference_seconds=_number("MAX_REFERENCE_SECONDS", cls.max_reference_seconds, float),
            max_inline_audio_bytes=_number("MAX_INLINE_AUDIO_BYTES", cls.max_inline_audio_bytes),
            max_chunks=_number("MAX_CHUNKS", cls.max_chunks),
            max_total_frames=_number("MAX_TOTAL_FRAMES", cls.max_total_frames),
            presign_seconds=_number("S3_PRESIGN_SECONDS", cls.presign_seconds),
            default_bucket=_optional("S3_BUCKET"),
            idle_cleanup_seconds=_number("IDLE_CLEANUP_SECONDS", cls.idle_cleanup_seconds, float),
            unload_after_idle=_flag("UNLOAD_AFTER_IDLE"),
            max_concurrency=_number("MAX_CONCURRENCY", cls.max_concurrency),
            s3_endpoint_url=_optional("AWS_ENDPOINT_URL"),
            s3_region=_optional("AWS_DEFAULT_REGION") or cls.s3_region,
            ref_audio_url_allowlist=_hosts("REF_AUDIO_URL_ALLOWLIST"),
            ref_audio_url_timeout=_number("REF_AUDIO_URL_TIMEOUT", cls.ref_audio_url_timeout, float),
            live_max_buffered_chars=_number("LIVE_MAX_BUFFERED_CHARS", cls.live_max_buffered_chars),
        )


@dataclass(frozen=True)
class ServerSettings:
    """How the processes start: the HTTP server's key and limits, preloading, the worker's mode."""

    api_key: str | None = None  # every HTTP route but /health needs `Authorization: Bearer <key>`
    max_request_bytes: int = 20 * 1024 * 1024
    log_level: str = "info"  # uvicorn's
    preload_model: bool = True  # load the model (and capture graphs) when the process starts
    streaming: bool = False  # RunPod worker: a generator handler, so `stream: true` jobs stream
    # hosts a /run job's webhook may reach though they resolve to private addresses
    webhook_allowlist: tuple[str, ...] = ()
    health_port: int | None = None  # PORT_HEALTH: /ping on this port too (RunPod load balancing)
    voice_aliases_path: Path | None = None  # OpenAI voice names -> library voices; None: the packaged file
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the HTTP server; () = CORS off
    live_idle_seconds: float = 60.0  # a live session with nothing to say and no message for this long ends
    live_max_messages_per_second: int = 200  # a live session's client messages, over any one second
    live_max_sessions: int = 64  # live sessions open at once (each holds a thread and its context)
    # `higgs-tts wyoming` (Home Assistant): where it listens, and the languages its voices are listed
    # under (Home Assistant offers a voice only in the languages it lists; the model reads any text)
    wyoming_uri: str = WYOMING_URI
    wyoming_languages: tuple[str, ...] = WYOMING_LANGUAGES

    @classmethod
    def from_env(cls) -> ServerSettings:
        return cls(
            api_key=_optional("API_KEY"),
            max_request_bytes=_number("MAX_REQUEST_BYTES", cls.max_request_bytes),
            log_level=_optional("UVICORN_LOG_LEVEL") or cls.log_level,
            preload_model=_flag("PRELOAD_MODEL", cls.preload_model),
            streaming=_flag("STREAMING"),
            webhook_allowlist=_hosts("WEBHOOK_ALLOWLIST"),
            health_port=_number("PORT_HEALTH", None),
            voice_aliases_path=Path(p) if (p := _optional("VOICE_ALIASES_PATH")) else None,
            cors_origins=tuple(o.strip() for o in (_optional("CORS_ORIGINS") or "").split(",") if o.strip()),
            live_idle_seconds=_number("LIVE_IDLE_SECONDS", cls.live_idle_seconds, float),
            live_max_messages_per_second=_number("LIVE_MAX_MESSAGES_PER_SECOND", cls.live_max_messages_per_second),
            live_max_sessions=_number("LIVE_MAX_SESSIONS", cls.live_max_sessions),
            wyoming_uri=_optional("WYOMING_URI") or cls.wyoming_uri,
            wyoming_languages=_list("WYOMING_LANGUAGES") or cls.wyoming_languages,
        )
