"""Reference audio sent with a request: decoded, checked against the limits, 24 kHz mono out."""

from __future__ import annotations

import numpy as np

from ..core.audio import FORMATS_NAMED, AudioError, AudioTooLong, duration_seconds, read_audio
from .errors import InputError
from .fetch import FetchError, fetch
from .schema import decode_base64

MIN_REFERENCE_SECONDS = 0.5


def reference_audio(encoded: str, field: str, max_bytes: int, max_seconds: float) -> np.ndarray:
    """The clip in the base64 field `field`; InputError naming the field and the limit otherwise."""
    return decoded_reference(decode_base64(encoded, field, max_bytes), field, max_seconds)


def fetched_reference(url: str, field: str, allowlist, max_bytes: int, max_seconds: float,
                      timeout: float) -> np.ndarray:
    """The clip at `url` (the rules: service/fetch.py); InputError naming the field and the reason."""
    try:
        data = fetch(url, allowlist, max_bytes, timeout)
    except FetchError as exc:
        raise InputError(f"{field}: {exc}", field, exc.code) from None
    return decoded_reference(data, field, max_seconds)


def decoded_reference(data: bytes, field: str, max_seconds: float) -> np.ndarray:
    """A recording's bytes as a checked 24 kHz mono reference."""
    try:
        audio = read_audio(data, max_seconds=max_seconds)
    except AudioTooLong as exc:
        raise InputError(f"{field}: {exc}", field, "too_long") from None
    except AudioError as exc:
        hint = "" if FORMATS_NAMED in str(exc) else f" (send {FORMATS_NAMED})"
        raise InputError(f"{field}: {exc}{hint}", field) from None
    seconds = duration_seconds(audio)
    if seconds > max_seconds + 0.5:  # a header that understated the length
        raise InputError(f"{field}: audio is {seconds:.1f} s long; the limit is {max_seconds:g} s", field, "too_long")
    if seconds < MIN_REFERENCE_SECONDS:
        raise InputError(f"{field}: audio is {seconds:.2f} s long; at least {MIN_REFERENCE_SECONDS:g} s is needed",
                         field)
    return audio
