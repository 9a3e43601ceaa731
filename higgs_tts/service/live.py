"""A live session: text arrives in pieces (an LLM writing), speech leaves phrase by phrase.

    session = LiveSession(service, config)      config: the generation fields (InputError if bad)
    session.text("Hel") / .text("lo. How")      cut into phrases at sentence ends (core.text.cut_phrases)
    session.flush()                              speak what is buffered now
    session.cancel()                             stop speaking, drop the buffer; the session goes on
    session.close()                              speak what is buffered, then `done`
    session.next_event(timeout)                  the next event dict, or None (see EVENTS)
    session.abort()                              the client is gone: stop now, free the engine slot

One worker thread speaks the phrases in order, each with the earlier ones as context (the
synthesizer's LiveSynthesis, as a long text's chunks), so phrase n+1 is generated as soon as
phrase n is, while its audio still streams. Its events go through a bounded queue: a reader
that does not keep up stalls the worker (and the engine holds at most one phrase's frames),
so nothing grows without bound. The audio is decoded by one StreamingDecoder across phrases; it
is settled (decoded to the end) whenever no phrase waits, so a pause never holds speech back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..core.audio import SAMPLE_RATE
from ..core.streaming import StreamingDecoder
from ..core.text import cut_phrases, words_per_chunk
from ..synthesis.plan import has_speech
from .errors import InputError, as_job_error, describe_failure
from .formats import StreamEncoder
from .schema import check_text, parse_input
from .speech import SpeechService

log = logging.getLogger(__name__)

# Events, as the transport sends them (`audio` is bytes here; the transport encodes it):
#   {"type": "audio", "seq", "audio", "start_seconds", "segment"}
#   {"type": "segment", "segment", "text", "duration_seconds"}      a phrase's audio is all out
#   {"type": "done", "segments", "duration_seconds", "first_audio_seconds", "seed", ...}
#   {"type": "error", "code", "message", "param", "fatal"}         fatal: the session has ended
EVENTS = ("audio", "segment", "done", "error")

# Generation fields a session does not take: the text comes in pieces, one phrase is one chunk,
# audio goes to the socket, and speed changes need the whole clip.
REFUSED = ("transcript", "action", "chunk_method", "chunk_max_word_num", "chunk_max_num_turns", "s3_bucket",
           "s3_key", "stream", "speed")
DEFAULT_FORMAT = "pcm"  # 16-bit little-endian mono at 24 kHz
PLACEHOLDER = "live"  # the text the config is validated with (every phrase replaces it)
EVENT_QUEUE = 32  # events between the worker and the transport (audio pieces are ~1.6 s)
_END = object()


@dataclass
class _Phrase:
    epoch: int
    index: int
    text: str


@dataclass
class _Bound:
    index: int
    text: str
    start: int  # samples
    end: int


class LiveSession:
    def __init__(self, service: SpeechService, config: dict) -> None:
        """Validate the config and prepare the voices (loads the model, encodes reference clips:
        call it off the event loop). InputError / JobError as a generate job would get them."""
        if not isinstance(config, dict):
            raise InputError("config must be a JSON object", "config")
        for name in REFUSED:
            if name in config:
                raise InputError(f"{name}: not a live session field (the text comes in `text` messages, one "
                                 "phrase at a time)", name)
        raw = {**config, "transcript": PLACEHOLDER, "output_format": config.get("output_format", DEFAULT_FORMAT)}
        request = parse_input(raw)
        if request.action != "generate":
            raise InputError("config: only generation fields", "config")
        self.request = request
        self.max_buffered_chars = service.service.live_max_buffered_chars
        self.max_words = words_per_chunk(request.max_new_tokens)
        try:
            self.live = service.synthesizer.live(service.plan(request).synthesis)
        except Exception as exc:
            raise as_job_error(exc) from None
        self.format = request.output_format
        self._encoder = StreamEncoder(self.format, SAMPLE_RATE)
        self._events: queue.Queue = queue.Queue(EVENT_QUEUE)
        self._phrases: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._epoch = 0
        self._buffer = ""
        self._queued_chars = 0  # of phrases waiting to be spoken
        self._next_index = 0
        self._closing = False
        self._aborted = False
        self._speaking = False
        self._first_phrase_at: float | None = None
        self.first_audio_seconds: float | None = None
        self._seq = 0
        self._segments = 0  # phrases whose audio is all out
        self._last_segment = self._current = 0
        self._decoder_epoch = 0
        self._text_chars = 0
        self._started = time.perf_counter()
        self._new_decoder(0)
        self._worker = threading.Thread(target=self._work, name="live-session", daemon=True)
        self._worker.start()

    def ready(self) -> dict:
        """What the `ready` event tells the client."""
        return {"type": "ready", "response_format": self.format, "sample_rate": self.live.sample_rate,
                "seed": self.live.seed, "voices": self.live.voice_names,
                "max_buffered_chars": self.max_buffered_chars, "max_phrase_words": self.max_words}

    # -- from the client -------------------------------------------------------------------------

    def text(self, text: object) -> None:
        if not isinstance(text, str):
            raise InputError("text: must be a string", "text")
        try:
            check_text(text)
        except ValueError as exc:
            raise InputError(f"text: {exc}", "text") from None
        with self._lock:
            if self._closing:
                raise InputError("text: the session is closing (close was sent)", "text")
            waiting = len(self._buffer) + self._queued_chars
            if waiting + len(text) > self.max_buffered_chars:
                raise InputError(
                    f"text: {waiting + len(text)} characters would wait to be spoken, above the limit of "
                    f"{self.max_buffered_chars} (LIVE_MAX_BUFFERED_CHARS); send less ahead of the speech",
                    "text", "too_long")
            phrases, self._buffer = cut_phrases(self._buffer + text, self.max_words)
            for phrase in phrases:
                self._queue(phrase)

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        phrases, rest = cut_phrases(self._buffer, self.max_words)
        self._buffer = ""
        for phrase in [*phrases, rest]:
            self._queue(phrase)

    def _queue(self, phrase: str) -> None:
        phrase = phrase.strip()
        if not has_speech(phrase):
            return  # punctuation alone says nothing
        if self._first_phrase_at is None:
            self._first_phrase_at = time.perf_counter()
        self._queued_chars += len(phrase)
        self._phrases.put(_Phrase(self._epoch, self._next_index, phrase))
        self._next_index += 1

    def cancel(self) -> None:
        """Stop speaking and drop what is waiting; audio already queued for the client is dropped too."""
        with self._lock:
            self._epoch += 1
            self._buffer = ""
            self._queued_chars = 0

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._flush()
            self._closing = True
            self._phrases.put(_END)

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            self._epoch += 1
            self._phrases.put(_END)

    def busy(self) -> bool:
        """Whether it is speaking or has phrases waiting (an idle client is fine then)."""
        return self._speaking or not self._phrases.empty()

    # -- to the client ---------------------------------------------------------------------------

    def next_event(self, timeout: float | None = None) -> dict | None:
        """The next event (audio of a cancelled phrase is skipped), or None after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                epoch, event = self._events.get(timeout=left)
            except queue.Empty:
                return None
            if epoch is None or epoch == self._epoch:
                return event

    def _put(self, event: dict, epoch: int | None) -> None:
        """Blocks while the client is behind (backpressure); gives up once the client is gone."""
        while not self._aborted:
            try:
                self._events.put((epoch, event), timeout=0.2)
                return
            except queue.Full:
                continue

    # -- the worker ------------------------------------------------------------------------------

    def _new_decoder(self, base: int) -> None:
        self._decoder = StreamingDecoder(self.live.decode, hop=self.live.hop)
        self._base = base  # samples out before this decoder began
        self._decoded = base  # samples decoded so far
        self._frames = 0  # frames pushed into this decoder
        self._bounds: deque[_Bound] = deque()  # generated phrases whose audio is not all out
        self._phrase_start = base

    def _work(self) -> None:
        try:
            while True:
                item = self._phrases.get()
                if item is _END:
                    if not self._aborted:
                        self._finish()
                    return
                with self._lock:
                    if item.epoch != self._epoch:
                        continue
                    self._queued_chars -= len(item.text)
                    self._speaking = True
                if item.epoch != self._decoder_epoch:  # after a cancel: the old phrases' tail is not spoken
                    self._new_decoder(self._decoded)
                    self._decoder_epoch = item.epoch
                try:
                    self._speak(item)
                finally:
                    self._speaking = False
                if self._phrases.empty():  # nothing waits: decode to the end, so a pause holds nothing back
                    self._audio(self._decoder.finish(), item.epoch)
        except Exception as exc:  # the session ends; the transport says why
            failure = describe_failure(as_job_error(exc), "live")
            self._put({"type": "error", "code": failure.code, "message": failure.message, "param": failure.field,
                       "fatal": True}, None)
        finally:
            self._encoder.close()

    def _speak(self, phrase: _Phrase) -> None:
        self._current = phrase.index
        frames = self.live.phrase(phrase.text)
        try:
            for piece in frames:
                if phrase.epoch != self._epoch:
                    break
                self._frames += piece.shape[0]
                for audio in self._decoder.push(piece):
                    self._audio(audio, phrase.epoch)
        finally:
            frames.close()  # a phrase left early gives its engine slot back at the next burst
        if phrase.epoch != self._epoch:  # cancelled: what is not out yet is dropped
            self._new_decoder(self._decoded)
            return
        end = self._base + self._frames * self.live.hop
        self._bounds.append(_Bound(phrase.index, phrase.text, self._phrase_start, end))
        self._phrase_start = end
        self._text_chars += len(phrase.text)

    def _audio(self, samples: np.ndarray, epoch: int) -> None:
        """Decoded samples out as audio events, cut where a phrase ends (then its segment event)."""
        while True:
            while self._bounds and self._decoded >= self._bounds[0].end:  # all out (a phrase of no audio too)
                self._segment_done(self._bounds.popleft(), epoch)
            if not len(samples):
                return
            take = min(len(samples), self._bounds[0].end - self._decoded) if self._bounds else len(samples)
            part, samples = samples[:take], samples[take:]
            segment = self._bounds[0].index if self._bounds else self._current  # the phrase being generated
            if data := self._encoder.push(part):
                if self.first_audio_seconds is None and self._first_phrase_at is not None:
                    self.first_audio_seconds = time.perf_counter() - self._first_phrase_at
                self._put({"type": "audio", "seq": self._seq, "audio": data,
                           "start_seconds": round(self._decoded / self.live.sample_rate, 4), "segment": segment},
                          epoch)
                self._seq += 1
            self._decoded += take

    def _segment_done(self, bound: _Bound, epoch: int | None) -> None:
        self._segments += 1
        self._last_segment = bound.index
        self._put({"type": "segment", "segment": bound.index, "text": bound.text,
                   "duration_seconds": round((bound.end - bound.start) / self.live.sample_rate, 3)}, epoch)

    def _finish(self) -> None:
        epoch = self._epoch
        if epoch != self._decoder_epoch:
            self._new_decoder(self._decoded)
        self._audio(self._decoder.finish(), epoch)
        while self._bounds:  # phrases of no audio at all
            self._segment_done(self._bounds.popleft(), epoch)
        if data := self._encoder.finish():
            self._put({"type": "audio", "seq": self._seq, "audio": data,
                       "start_seconds": round(self._decoded / self.live.sample_rate, 4),
                       "segment": self._last_segment}, epoch)
            self._seq += 1
        self._put({"type": "done", "segments": self._segments, "audio_messages": self._seq,
                   "duration_seconds": round(self._decoded / self.live.sample_rate, 3),
                   "text_chars": self._text_chars, "seed": self.live.seed,
                   "first_audio_seconds": None if self.first_audio_seconds is None
                   else round(self.first_audio_seconds, 3),
                   "session_seconds": round(time.perf_counter() - self._started, 3)}, None)

