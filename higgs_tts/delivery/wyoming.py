"""Home Assistant's protocol: a Wyoming text-to-speech server (`higgs-tts wyoming`, port 10200).

    Describe                                   -> Info: one TTS program, every library voice
    Synthesize(text, voice)                    -> AudioStart, AudioChunk..., AudioStop
    SynthesizeStart(voice), SynthesizeChunk(text)..., SynthesizeStop
                                               -> per sentence: AudioStart, AudioChunk..., AudioStop;
                                                  then SynthesizeStopped
    anything refused (unknown voice, bad text) -> Error(text, code); the connection goes on

Audio is 16-bit mono PCM at 24 kHz, sent as it is decoded. A Synthesize is one generation job
through the speech service (`SpeechService.stream`, a long text chunked as on POST
/v1/audio/speech); a streamed request is a live session (service/live.py): each sentence is
spoken as soon as its text is in, with the earlier ones as context. Home Assistant also sends
the whole text as a Synthesize inside a streamed request, for servers that do not stream: it is
ignored there, as wyoming-piper does. The blocking work runs on threads, so several clients are
generated together by the engine's batching.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from ..core.audio import SAMPLE_RATE
from ..service.audit import AuditRecord
from ..service.errors import Failure, InputError
from ..service.events import Audio, ChunkEnd, Final
from ..service.formats import EMPTY_CLIP_SECONDS, to_pcm16
from ..service.live import LiveSession
from ..service.outcome import Outcome
from ..service.speech import SpeechService
from ..settings import ServerSettings
from .middleware import in_request_names

log = logging.getLogger(__name__)

WIDTH, CHANNELS = 2, 1  # bytes per sample: 16-bit mono
ATTRIBUTION = Attribution(name="Boson AI (Higgs Audio V2)", url="https://github.com/boson-ai/higgs-audio")
# The job's field names as a Wyoming client knows them (in error texts and codes' fields).
WYOMING_NAMES = {"ref_audio": "voice", "transcript": "text"}
POLL_SECONDS = 0.5  # a live session's event wait, between checks that the client is still there
WAITING_THREADS = 1024  # blocking waits (a generation's next piece, a session's next event) run on these
_END = object()


def describe(service: SpeechService, languages: tuple[str, ...]) -> Info:
    """The Info event: one TTS program with every voice in the library (read anew each time, so a
    voice added over HTTP shows up)."""
    voices = [TtsVoice(name=v["name"], description=v["description"], attribution=ATTRIBUTION, installed=True,
                       version=None, languages=list(languages))
              for v in service.list_voices()["voices"]]
    program = TtsProgram(name="higgs-tts", description="Higgs Audio V2 text-to-speech", attribution=ATTRIBUTION,
                         installed=True, version=None, voices=voices, supports_synthesize_streaming=True)
    return Info(tts=[program])


def error_event(failure: Failure) -> Event:
    failure = in_request_names(failure, WYOMING_NAMES)
    return Error(text=failure.message, code=failure.code).event()


def _voice_field(voice) -> dict:
    return {"ref_audio": voice.name} if voice is not None and voice.name else {}


class SpeechHandler(AsyncEventHandler):
    """One client connection; requests run one after another, as a client sends them."""

    def __init__(self, service: SpeechService, languages: tuple[str, ...], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.service, self.languages = service, languages
        self.cancel = threading.Event()  # set when the client is gone: generation stops at its next step
        self.streaming = False  # between SynthesizeStart and SynthesizeStop
        self.session: LiveSession | None = None  # the streamed request's (None after a refused start)
        self.pump: asyncio.Task | None = None  # the session's events out to the client

    async def handle_event(self, event: Event) -> bool:
        try:
            if Describe.is_type(event.type):
                info = await asyncio.to_thread(describe, self.service, self.languages)
                await self.write_event(info.event())
            elif SynthesizeStart.is_type(event.type):
                await self._start(SynthesizeStart.from_event(event))
            elif SynthesizeChunk.is_type(event.type):
                if self.session is not None:
                    self.session.text(SynthesizeChunk.from_event(event).text)
                elif not self.streaming:
                    raise InputError("synthesize-chunk: no synthesize-start came before it", "type")
            elif SynthesizeStop.is_type(event.type):
                await self._stop()
            elif Synthesize.is_type(event.type):
                if not self.streaming:  # inside a streamed request it repeats the chunks' text
                    await self._synthesize(Synthesize.from_event(event))
            else:
                log.debug("wyoming: ignoring a %s event", event.type)
        except ConnectionError:  # the client is gone: run() ends, and disconnect() stops its work
            return False
        except Exception as exc:  # refused input or a failed generation: the client is told, the connection stays
            await self.write_event(error_event(SpeechService.describe_failure(exc, "wyoming")))
        return True

    async def disconnect(self) -> None:
        """The client is gone: stop its generation and its session now (their engine slots are freed)."""
        self.cancel.set()
        if self.session is not None:
            self.session.abort()
        if self.pump is not None:
            self.pump.cancel()

    # -- one request, one text -------------------------------------------------------------------

    async def _synthesize(self, request: Synthesize) -> None:
        raw = {"transcript": request.text, "output_format": "pcm", **_voice_field(request.voice)}
        items = self.service.stream(raw, f"wyoming-{uuid.uuid4().hex[:12]}", cancel=self.cancel)
        loop = asyncio.get_running_loop()
        started, step = False, None
        try:
            while True:
                step = loop.run_in_executor(None, next, items, _END)  # the next piece, generated on a thread
                # shielded: cancelled (shutdown), the thread still runs until it is told to stop below
                if (item := await asyncio.shield(step)) is _END:
                    break
                match item:
                    case Audio(samples):
                        if not started:
                            await self._audio_start()
                            started = True
                        await self._chunk(to_pcm16(samples))
                    case ChunkEnd():
                        pass
                    case Final(response) if response.get("success"):
                        if not started:  # the model ended at once: a short silence, so the client has audio
                            await self._silence()
                            started = True
                        await self.write_event(AudioStop().event())
                    case Final(response):
                        if started:
                            await self.write_event(AudioStop().event())
                        failure = Failure(response["error"], response["error_code"], response.get("error_field"))
                        await self.write_event(error_event(failure))
        finally:
            if step is not None and not step.done():  # cancelled mid-piece: stop the generation, then close
                self.cancel.set()
                await asyncio.wait([step])
            await asyncio.to_thread(items.close)

    async def _audio_start(self) -> None:
        await self.write_event(AudioStart(rate=SAMPLE_RATE, width=WIDTH, channels=CHANNELS).event())

    async def _silence(self) -> None:
        """AudioStart and a short silence: the clip of a sentence the model ended at once."""
        await self._audio_start()
        await self._chunk(bytes(round(EMPTY_CLIP_SECONDS * SAMPLE_RATE) * WIDTH))

    async def _chunk(self, pcm: bytes) -> None:
        await self.write_event(AudioChunk(rate=SAMPLE_RATE, width=WIDTH, channels=CHANNELS, audio=pcm).event())

    # -- a streamed request: text in as it is written --------------------------------------------

    async def _start(self, request: SynthesizeStart) -> None:
        if self.streaming:
            raise InputError("synthesize-start: a streamed request is already open (send synthesize-stop)", "type")
        self.streaming = True
        config = {"output_format": "pcm", **_voice_field(request.voice)}
        outcome = Outcome(AuditRecord(job_id=f"wyoming-{uuid.uuid4().hex[:12]}", raw=config, action="live"))
        try:
            self.session = await asyncio.to_thread(LiveSession, self.service, config)  # may load the model
        except Exception as exc:  # refused: audited here, the client is told by handle_event
            outcome.failed(SpeechService.describe_failure(exc, "wyoming"))
            outcome.emit()
            raise
        outcome.note(delivery="wyoming")
        self.pump = asyncio.create_task(self._pump(self.session, outcome))

    async def _stop(self) -> None:
        if not self.streaming:
            raise InputError("synthesize-stop: no synthesize-start came before it", "type")
        session, pump = self.session, self.pump
        self.streaming, self.session, self.pump = False, None, None
        if session is None:  # its start was refused (the client was told): nothing to speak
            await self.write_event(SynthesizeStopped().event())
            return
        session.close()
        await pump  # to the session's end; it sends SynthesizeStopped

    async def _pump(self, session: LiveSession, outcome: Outcome) -> None:
        """Session events as Wyoming events: each sentence its own AudioStart ... AudioStop. The
        session's audit line is written when it ends (`cancelled` when the client left first)."""
        try:
            await self._forward(session, outcome)
        except ConnectionError:  # the client is gone; disconnect() aborts the session
            pass
        finally:
            outcome.emit()

    async def _forward(self, session: LiveSession, outcome: Outcome) -> None:
        open_audio, ended = False, -1  # ended: the last sentence whose clip is closed
        while True:
            event = await asyncio.to_thread(session.next_event, POLL_SECONDS)
            if event is None:
                continue
            kind = event["type"]
            if kind == "audio":
                if event["segment"] <= ended:  # the session's closing silence, its sentence's clip already sent
                    continue
                if not open_audio:
                    await self._audio_start()
                    open_audio = True
                await self._chunk(event["audio"])
                continue
            if kind == "segment":
                ended = event["segment"]
                if not open_audio:  # a sentence the model ended at once: its clip is a short silence, as above
                    await self._silence()
                    open_audio = True
            if open_audio and kind in ("segment", "done", "error"):
                await self.write_event(AudioStop().event())
                open_audio = False
            if kind == "error":  # the session ended early
                failure = Failure(event["message"], event["code"], event.get("param"))
                outcome.failed(failure)
                await self.write_event(error_event(failure))
            if kind == "done":
                outcome.spoke(event)
            if kind in ("done", "error"):
                await self.write_event(SynthesizeStopped().event())
                return


def serve(uri: str | None = None) -> None:
    """The Wyoming server, until SIGTERM (which stops every generation at once) or Ctrl-C."""
    server = ServerSettings.from_env()
    uri = uri or server.wyoming_uri
    service = SpeechService()
    if server.preload_model:
        threading.Thread(target=_preload, args=(service,), name="preload", daemon=True).start()

    async def run() -> None:
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(WAITING_THREADS, thread_name_prefix="wyoming"))
        listener = AsyncServer.from_uri(uri)
        log.info("Wyoming server on %s (voices in %s)", uri, ", ".join(server.wyoming_languages))
        try:
            await listener.run(partial(SpeechHandler, service, server.wyoming_languages))
        finally:
            service.synthesizer.stop_all()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        service.synthesizer.stop_all()


def _preload(service: SpeechService) -> None:
    try:
        service.synthesizer.prepare()
    except Exception as exc:  # every request reports it instead
        log.warning("model preload failed: %s", exc)
