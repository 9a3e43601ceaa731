"""The work one generation may ask for, known and checked before any work is done.

    chunks        the text's generation chunks: at most MAX_CHUNKS
    max_frames    chunks x max_new_tokens, the most frames generation can make: at most MAX_TOTAL_FRAMES
    expected      about SPEECH_WORD_FRAMES frames a word (never above max_frames): sizes an inline
                  result before it is generated (the context each chunk carries is bounded by the
                  synthesizer: MAX_CONTEXT_FRAMES)

Each refusal names the fields to change and the limit it met.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.audio import FRAMES_PER_SECOND
from ..core.text import SPEECH_WORD_FRAMES, word_count
from ..settings import ServiceSettings
from . import formats
from .errors import InputError


@dataclass(frozen=True)
class Work:
    chunks: int
    max_frames: int  # chunks x max_new_tokens
    expected_frames: int  # about SPEECH_WORD_FRAMES a word, at most max_frames

    def expected_bytes(self, output_format: str, speed: float = 1.0) -> int:
        """About how large the result will be in `output_format` (speed shortens or lengthens it)."""
        seconds = self.expected_frames / FRAMES_PER_SECOND / speed
        return int(seconds * formats.bytes_per_second(output_format))


def check_work(chunks: list[str], max_new_tokens: int, chunk_method: str | None, limits: ServiceSettings,
               automatic: bool = False) -> Work:
    """The request's Work, or InputError (`too_long`) naming the fields when it is above a limit.
    `automatic`: the service chose the chunk_method (a text too long for one chunk; schema.chunked_when_long)."""
    how = f"chunk_method {chunk_method!r}" if chunk_method else "no chunk_method"
    if automatic:
        how += ", chosen because the text is longer than one chunk can speak; chunk_method null keeps one chunk"
    if len(chunks) > limits.max_chunks:
        raise InputError(
            f"transcript: makes {len(chunks)} chunks ({how}), above the limit of {limits.max_chunks} chunks a "
            "request (MAX_CHUNKS); raise chunk_max_word_num or chunk_max_num_turns, or split the text",
            "transcript", "too_long",
        )
    max_frames = len(chunks) * max_new_tokens
    if max_frames > limits.max_total_frames:
        bigger = "chunk_max_num_turns" if chunk_method == "speaker" else "chunk_max_word_num"
        raise InputError(
            f"max_new_tokens: {len(chunks)} chunks ({how}) x max_new_tokens {max_new_tokens} = {max_frames} "
            f"frames, above the limit of {limits.max_total_frames} frames a request (MAX_TOTAL_FRAMES); lower "
            f"max_new_tokens, raise {bigger}, or split the text",
            "max_new_tokens", "too_long",
        )
    expected = min(max_frames, sum(word_count(c) for c in chunks) * SPEECH_WORD_FRAMES)
    return Work(chunks=len(chunks), max_frames=max_frames, expected_frames=expected)


def check_inline(work: Work, output_format: str, speed: float, max_inline_bytes: int) -> None:
    """Refuse (`result_too_large`) before generating a result that would not fit in a response."""
    expected = work.expected_bytes(output_format, speed)
    if expected > max_inline_bytes:
        raise InputError(
            f"output_format: the audio would be about {expected / 1e6:.1f} MB as {output_format} "
            f"({work.expected_frames / FRAMES_PER_SECOND:.0f} s of speech), above the "
            f"{max_inline_bytes / 1e6:.1f} MB that fits in a response (no s3_bucket was given); set s3_bucket, "
            "use output_format 'mp3' or 'opus', or stream the job",
            "output_format", "result_too_large",
        )
