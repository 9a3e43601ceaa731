"""The job `input` of the documented API, validated field by field.

Field names and defaults are fixed by the product documentation; extensions are added, never
renamed. Every error names the field and the rule it broke.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from ..core.audio import MAX_SPEED, MIN_SPEED
from ..core.sampling import MAX_SEED, chunk_knobs, sampling_knobs
from ..core.text import CHUNK_METHODS, chunk_by_speaker, speaker_tags, word_count, words_per_chunk
from ..core.voices import NAME_PATTERN
from .errors import InputError
from .formats import FORMATS
from .storage import validate_bucket, validate_key

ACTIONS = ("generate", "health", "list_voices", "add_voice", "get_voice", "delete_voice")
PRIVATE_FIELDS = {"transcript", "scene_prompt", "ref_audio_transcript", "ref_audio_base64", "ref_audio_url"}
OutputFormat = Literal[tuple(FORMATS)]
ChunkMethod = Literal[CHUNK_METHODS]


# The model's control tokens are all spelled <|...|>; typed into a text they would become prompt structure.
CONTROL_TOKEN = re.compile(r"<\|[^|<>\s]{1,40}\|>")


def check_text(text: str) -> str:
    """A user text that can go into a prompt: no control characters, no lone UTF-16 surrogates
    (they cannot be encoded), no control-token strings (prompt injection). ValueError saying which."""
    if any(unicodedata.category(c) == "Cc" and c not in "\n\r\t" for c in text):
        raise ValueError("must not contain control characters")
    if any(unicodedata.category(c) == "Cs" for c in text):
        raise ValueError("must not contain lone UTF-16 surrogates (invalid Unicode)")
    if token := CONTROL_TOKEN.search(text):
        raise ValueError(f"must not contain the model's control tokens such as {token.group()!r}")
    return text


def decode_base64(value: str, field: str, max_bytes: int) -> bytes:
    """Strict base64 (a `data:...;base64,` prefix is allowed), at most `max_bytes` decoded."""
    if "," in value[:100] and value.startswith("data:"):
        value = value.split(",", 1)[1]
    if len(value) > (max_bytes * 4) // 3 + 8:
        raise InputError(f"{field} must decode to at most {max_bytes} bytes", field, "too_large")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{field} is not valid base64", field) from None
    if not data:
        raise InputError(f"{field} is empty", field)
    if len(data) > max_bytes:
        raise InputError(f"{field} must decode to at most {max_bytes} bytes", field, "too_large")
    return data


class _Input(BaseModel):
    # strict: `true` is not a number and "50" is not an integer (integers still count as floats)
    model_config = ConfigDict(extra="forbid", strict=True)


def sampling_fields() -> dict:
    """Pydantic fields for every knob of core.sampling (sampling and chunking), with its default and bounds."""
    return {k.name: (k.type if k.default is not None else k.type | None,
                     Field(k.default, ge=k.ge, gt=k.gt, le=k.le, description=k.help))
            for k in (*sampling_knobs(), *chunk_knobs())}


class _ReferenceFields(_Input):
    """A reference clip sent with the job, inline or by URL (at most one of the two)."""

    ref_audio_base64: str | None = None
    ref_audio_url: str | None = Field(None, max_length=4096)  # fetched: https, public addresses (service/fetch.py)

    @field_validator("ref_audio_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("https://", "http://")):
            raise ValueError("must be an https:// URL (http:// only for a host in REF_AUDIO_URL_ALLOWLIST)")
        return value


class _GenerateFields(_ReferenceFields):
    """Generation fields besides the sampling and chunking knobs (those come from core.sampling)."""

    action: Literal["generate"] = "generate"
    transcript: str
    ref_audio: str | None = None
    scene_prompt: str | None = None
    chunk_method: ChunkMethod | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    s3_bucket: str | None = None
    s3_key: str | None = None
    # Extensions.
    output_format: OutputFormat = "wav"
    ref_audio_in_system_message: bool = False
    ref_audio_transcript: str | None = Field(None, max_length=5000)
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)  # playback speed, pitch kept
    stream: bool = False  # RunPod /stream: audio items while generating (a streaming worker only)

    @field_validator("transcript")
    @classmethod
    def _transcript(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return check_text(value)

    @field_validator("scene_prompt", "ref_audio_transcript")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None:
            check_text(value)
        if value is not None and len(value) > 5000:
            raise ValueError("must be at most 5000 characters")
        return value

    @field_validator("ref_audio")
    @classmethod
    def _voices(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        names = [n.strip() for n in value.split(",")]
        if len(names) > 10:
            raise ValueError("names at most 10 voices")
        for name in names:
            bare = name.removeprefix("profile:")
            if not NAME_PATTERN.match(bare):
                raise ValueError(f"voice name {name!r} is invalid: use 1 to 64 letters, digits, '_' or '-'")
        return ",".join(names)

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        return None if value is None else validate_bucket(value)

    @field_validator("s3_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        return None if value is None else validate_key(value)


GenerateInput = create_model("GenerateInput", __base__=_GenerateFields, __module__=__name__, **sampling_fields())


# Below this many words a chunk (max_new_tokens 200, 8 s), max_new_tokens is taken as a cap on a short clip
# (a preview), not as a chunk size: such a request is never chunked on its own.
MIN_AUTO_CHUNK_WORDS = 10


def chunked_when_long(request: GenerateInput) -> GenerateInput:
    """A request that names no chunk_method, with more words than one chunk can speak within its
    max_new_tokens, chunked: by speaker turns when it has speaker tags, as many whole turns a chunk as
    surely fit (the longest turn decides), else by sentences of at most that many words (unless it gives
    chunk_max_num_turns or chunk_max_word_num). `chunk_method: null` keeps one chunk, and so does a
    max_new_tokens under MIN_AUTO_CHUNK_WORDS words."""
    limit, given = words_per_chunk(request.max_new_tokens), request.model_fields_set
    if "chunk_method" in given or limit < MIN_AUTO_CHUNK_WORDS or word_count(request.transcript) <= limit:
        return request
    if not speaker_tags(request.transcript):
        words = request.chunk_max_word_num if "chunk_max_word_num" in given else limit
        return request.model_copy(update={"chunk_method": "sentence", "chunk_max_word_num": words})
    longest = max(word_count(turn) for turn in chunk_by_speaker(request.transcript))
    turns = request.chunk_max_num_turns if "chunk_max_num_turns" in given else max(1, limit // max(1, longest))
    return request.model_copy(update={"chunk_method": "speaker", "chunk_max_num_turns": turns})


class HealthInput(_Input):
    action: Literal["health"]


class ListVoicesInput(_Input):
    action: Literal["list_voices"]


class _NamedVoice(_Input):
    voice_name: str

    @field_validator("voice_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError("must be 1 to 64 letters, digits, '_' or '-'")
        return value


class AddVoiceInput(_NamedVoice, _ReferenceFields):
    action: Literal["add_voice"]
    ref_audio_transcript: str = Field(min_length=1, max_length=5000)
    overwrite: bool = False
    description: str | None = Field(None, max_length=500)  # shown in voice lists; default "Voice cloned from ..."

    @field_validator("ref_audio_transcript", "description")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None:
            check_text(value)
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value


class GetVoiceInput(_NamedVoice):
    action: Literal["get_voice"]


class DeleteVoiceInput(_NamedVoice):
    action: Literal["delete_voice"]


_MODELS = {
    "generate": GenerateInput,
    "health": HealthInput,
    "list_voices": ListVoicesInput,
    "add_voice": AddVoiceInput,
    "get_voice": GetVoiceInput,
    "delete_voice": DeleteVoiceInput,
}


def _describe(error: dict) -> tuple[str, str]:
    field = ".".join(str(p) for p in error["loc"]) or "input"
    kind = error["type"]
    if kind == "extra_forbidden":
        return field, f"unknown field '{field}'"
    if kind == "missing":
        return field, f"{field} is required"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    private = field in PRIVATE_FIELDS  # what people say stays out of responses and logs
    shown = "" if private or isinstance(got, dict | list) or got is None else f" (got {str(got)[:60]!r})"
    return field, f"{field}: {message}{shown}"


def parse_input(raw: object) -> (GenerateInput | HealthInput | ListVoicesInput | AddVoiceInput | GetVoiceInput
                                 | DeleteVoiceInput):
    """The validated input; raises InputError naming the first broken field (all listed)."""
    if not isinstance(raw, dict):
        raise InputError("input must be a JSON object", "input")
    action = raw.get("action", "generate")
    if not isinstance(action, str) or action not in _MODELS:
        raise InputError(f"action must be one of {', '.join(ACTIONS)}; got {action!r}", "action")
    try:
        return _MODELS[action].model_validate(raw)
    except ValidationError as exc:
        described = [_describe(e) for e in exc.errors()]
        raise InputError("; ".join(m for _, m in described), described[0][0]) from None
