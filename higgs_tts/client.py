"""A dependency-free Python client for the RunPod endpoint (or the local `--rp_serve_api` server).

    from higgs_tts.client import HiggsTTSClient
    client = HiggsTTSClient("https://api.runpod.ai/v2/ENDPOINT_ID", api_key="...")
    result = client.generate_audio("Hello!", voice="belinda", scene_prompt=None, s3_bucket=None)
    client.save_audio(result, "hello.wav")

From a shell (ENDPOINT_URL and RUNPOD_API_KEY, or --endpoint-url and --api-key):

    python -m higgs_tts.client speak "Hello!" --voice belinda --out hello.wav [--async] [--stream]
    python -m higgs_tts.client health
    python -m higgs_tts.client voices
    python -m higgs_tts.client live "Hello! How are you?" --endpoint-url http://127.0.0.1:8000 --out hi.wav

`LiveSpeech` / `live` speak text as it is written over `higgs-tts serve`'s WebSocket.

It uses only the standard library, so it can be copied into any project as one file
(`python client.py speak ...` then works the same way).
"""

from __future__ import annotations

import argparse
import base64
import codecs
import contextlib
import hashlib
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
from pathlib import Path

PENDING = ("IN_QUEUE", "IN_PROGRESS")
MODES = ("sync", "async")


def job_output(output: object) -> dict:
    """A job's response. A streaming worker (STREAMING=1) returns the list of what the job yielded;
    its last item is the response. A response too large for one stream item (1 MB) comes as
    `audio_part` items and then the response with `audio_parts`: the parts are joined back."""
    if isinstance(output, list):
        items, output = output, output[-1] if output else None
        if isinstance(output, dict) and output.get("audio_parts"):
            parts = [i["audio_base64"] for i in items if isinstance(i, dict) and i.get("type") == "audio_part"]
            output = {**output, "audio_base64": "".join(parts)}
    return output if isinstance(output, dict) else {}


class HiggsTTSError(RuntimeError):
    """The job failed; `output` holds whatever the worker returned with the error, `status` the job's
    status (FAILED, TIMED_OUT, ...) or, for an HTTP error, the HTTP status code."""

    def __init__(self, message: str, output: dict | None = None, status: str | int | None = None) -> None:
        super().__init__(message)
        self.output = output or {}
        self.status = status


class HiggsTTSClient:
    """`mode="async"` makes generate_audio use /run and poll /status instead of /runsync."""

    def __init__(self, endpoint_url: str | None = None, api_key: str | None = None, timeout: float = 600.0,
                 mode: str = "sync") -> None:
        endpoint_url = endpoint_url or os.environ.get("ENDPOINT_URL") or os.environ.get("RUNPOD_ENDPOINT_URL")
        if not endpoint_url:
            raise ValueError("endpoint_url (or ENDPOINT_URL) is required, e.g. https://api.runpod.ai/v2/ENDPOINT_ID")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.endpoint_url = endpoint_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("RUNPOD_API_KEY")
        self.timeout = timeout
        self.mode = mode
        self._post_polls = False  # set once a server answers GET /status with 405 (the SDK's local server)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.endpoint_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise HiggsTTSError(f"HTTP {exc.code} from {path}: {detail}", status=exc.code) from None

    def _poll(self, kind: str, job_id: str) -> dict:
        if not self._post_polls:
            try:
                return self._request("GET", f"/{kind}/{job_id}")
            except HiggsTTSError as exc:
                if exc.status != 405:
                    raise
                self._post_polls = True
        return self._request("POST", f"/{kind}/{job_id}")  # the SDK's local server

    def _status(self, job_id: str) -> dict:
        return self._poll("status", job_id)

    def _finish(self, reply: dict, poll_seconds: float) -> dict:
        """Poll a job until it leaves the queue, then its output; raises HiggsTTSError when it failed."""
        deadline = time.monotonic() + self.timeout
        while reply.get("status") in PENDING and time.monotonic() < deadline:
            time.sleep(poll_seconds)
            reply = self._status(reply["id"])
        output = job_output(reply.get("output"))
        status = reply.get("status")
        if status == "FAILED" or output.get("success") is False:
            raise HiggsTTSError(str(reply.get("error") or output.get("error") or "job failed"), output,
                                status or "FAILED")
        if status != "COMPLETED":
            raise HiggsTTSError(f"job did not finish: status {status!r}", output, status)
        return output

    def run_sync(self, job_input: dict, poll_seconds: float = 1.0) -> dict:
        """Run one job with /runsync and return its `output` (polling /status if RunPod answers before
        the job is done); raises HiggsTTSError when the job failed."""
        return self._finish(self._request("POST", "/runsync", {"input": job_input}), poll_seconds)

    def run(self, job_input: dict) -> str:
        """Queue one job with /run; returns its id (see status and run_async)."""
        reply = self._request("POST", "/run", {"input": job_input})
        if not reply.get("id"):
            raise HiggsTTSError(f"/run returned no job id: {json.dumps(reply)[:300]}", status=reply.get("status"))
        return reply["id"]

    def status(self, job_id: str) -> dict:
        """The job's status reply as RunPod sends it: `id`, `status`, and `output` or `error` when done."""
        return self._status(job_id)

    def run_async(self, job_input: dict, poll_seconds: float = 1.0) -> dict:
        """Queue one job with /run, poll /status until it is done and return its `output`; raises
        HiggsTTSError when the job failed (as run_sync does)."""
        return self._finish({"id": self.run(job_input), "status": "IN_QUEUE"}, poll_seconds)

    def stream(self, job_input: dict, poll_seconds: float = 0.2):
        """Items of a streaming job (`stream: true`, worker started with STREAMING=1) as they arrive:
        audio items (base64 PCM), then the final response. Raises HiggsTTSError on a failure."""
        job_id = self.run({**job_input, "stream": True})
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._poll("stream", job_id)
            for entry in reply.get("stream") or []:
                item = entry.get("output") if isinstance(entry, dict) else None
                if not isinstance(item, dict) or item.get("success") is False:
                    raise HiggsTTSError(str((item or {}).get("error") or "stream failed"), item, "FAILED")
                yield item
            status = reply.get("status")
            if status == "COMPLETED":
                return
            if status not in PENDING or reply.get("error"):
                raise HiggsTTSError(str(reply.get("error") or f"stream ended with status {status!r}"),
                                    status=status)
            if time.monotonic() > deadline:
                raise HiggsTTSError(f"stream did not finish within {self.timeout:g} s", status=status)
            time.sleep(poll_seconds)

    def generate_audio(
        self,
        text: str,
        voice: str | None = None,
        scene_prompt: str | None = None,
        s3_bucket: str | None = None,
        *,
        mode: str | None = None,
        **options,
    ) -> dict:
        """Speech for `text`; extra keyword arguments are passed as request fields (seed, ...).
        `mode="async"` uses /run and polls /status (default: the client's mode, "sync" = /runsync)."""
        job = {"transcript": text, **options}
        for key, value in (("ref_audio", voice), ("scene_prompt", scene_prompt), ("s3_bucket", s3_bucket)):
            if value is not None:
                job[key] = value
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        return self.run_async(job) if mode == "async" else self.run_sync(job)

    def health(self) -> dict:
        return self.run_sync({"action": "health"})

    def list_voices(self) -> list[dict]:
        return self.run_sync({"action": "list_voices"})["voices"]

    def add_voice(self, name: str, audio_path: str | Path, transcript: str, overwrite: bool = False) -> dict:
        audio = base64.b64encode(Path(audio_path).read_bytes()).decode("ascii")
        return self.run_sync({"action": "add_voice", "voice_name": name, "ref_audio_base64": audio,
                              "ref_audio_transcript": transcript, "overwrite": overwrite})

    def get_voice(self, name: str) -> dict:
        return self.run_sync({"action": "get_voice", "voice_name": name})["voice"]

    def delete_voice(self, name: str) -> dict:
        return self.run_sync({"action": "delete_voice", "voice_name": name})

    @staticmethod
    def save_audio(output: dict, path: str | Path) -> Path:
        """Write inline audio to `path` (for uploaded audio, download `presigned_url` instead)."""
        if "audio_base64" not in output:
            raise HiggsTTSError("the result has no inline audio; it was uploaded to " + str(output.get("audio_url")))
        path = Path(path)
        path.write_bytes(base64.b64decode(output["audio_base64"]))
        return path


def generate_audio(text: str, voice: str | None = None, scene_prompt: str | None = None,
                   s3_bucket: str | None = None, *, mode: str | None = None, **options) -> dict:
    """The documented one-call form, configured by ENDPOINT_URL and RUNPOD_API_KEY."""
    return HiggsTTSClient().generate_audio(text, voice, scene_prompt, s3_bucket, mode=mode, **options)


# -- live speech: WS /v1/audio/speech/stream on `higgs-tts serve` ----------------------------------


class _WebSocket:
    """Just enough of RFC 6455 for a client (stdlib only): text frames out (masked), frames in
    (fragments joined, pings answered), a close handshake. Sending is thread-safe."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        secure = parts.scheme in ("https", "wss")
        port = parts.port or (443 if secure else 80)
        sock = socket.create_connection((parts.hostname, port), timeout=timeout)
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        self.sock, self._lock, self._buffer = sock, threading.Lock(), b""
        key = base64.b64encode(os.urandom(16)).decode()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status, *fields = head.decode("latin-1").split("\r\n")
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        found = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        if " 101 " not in status + " " or found.get("sec-websocket-accept") != accept.decode():
            sock.close()
            raise HiggsTTSError(f"{url}: no WebSocket here ({status})", status=status)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._buffer += data

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        head = bytes([0x80 | opcode])
        if size < 126:
            head += bytes([0x80 | size])
        elif size < 1 << 16:
            head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
        key = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
        with self._lock:
            self.sock.sendall(head + mask + masked)

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def receive_text(self) -> str | None:
        """The next text message; None once the server has closed."""
        parts: list[bytes] = []
        while True:
            first, second = self._take(2)
            size = second & 0x7F
            if size == 126:
                size = int.from_bytes(self._take(2), "big")
            elif size == 127:
                size = int.from_bytes(self._take(8), "big")
            payload, opcode = self._take(size), first & 0x0F
            if opcode == 0x8:  # close: answer it
                with contextlib.suppress(OSError):
                    self._send(0x8, payload[:2])
                return None
            if opcode == 0x9:
                self._send(0xA, payload)
            elif opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if first & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(0x8, (1000).to_bytes(2, "big"))
        self.sock.close()


class LiveSpeech:
    """Text in as it is written, speech out phrase by phrase (`higgs-tts serve`, docs/api.md, "Live speech").

        with LiveSpeech("http://127.0.0.1:8000", api_key=None, voice="belinda") as live:
            for event in live.speak(llm_tokens()):     # sends the pieces, then close
                if event["type"] == "audio":
                    play(event["pcm"])                  # 16-bit mono PCM at 24 kHz (the default format)

    `config` is the config message's fields (voice, response_format, seed, ...). `ready` holds the
    server's ready message; events are dicts as the server sends them, audio ones with `pcm` (the
    decoded bytes) beside `audio`.
    """

    def __init__(self, server_url: str, api_key: str | None = None, timeout: float = 120.0, **config) -> None:
        url = server_url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.ws = _WebSocket(url + "/v1/audio/speech/stream", headers, timeout)
        with contextlib.suppress(OSError):  # closed at once (a wrong key): the reason is the next message
            self.send({"type": "config", **config})
        self.ready = self.receive()
        if self.ready.get("type") != "ready":
            self.ws.close()
            raise HiggsTTSError(f"live session refused: {self.ready.get('message')}", self.ready,
                                self.ready.get("code"))

    def send(self, message: dict) -> None:
        self.ws.send_text(json.dumps(message))

    def text(self, text: str) -> None:
        self.send({"type": "text", "text": text})

    def flush(self) -> None:
        self.send({"type": "flush"})

    def cancel(self) -> None:
        self.send({"type": "cancel"})

    def close(self) -> None:
        """Speak what is buffered, then the server sends `done` and ends the session."""
        self.send({"type": "close"})

    def receive(self) -> dict:
        message = self.ws.receive_text()
        if message is None:
            return {"type": "closed"}
        event = json.loads(message)
        if event.get("type") == "audio":
            event["pcm"] = base64.b64decode(event["audio"])
        return event

    def events(self):
        """Events until `done` (included); raises HiggsTTSError if the session ends without it."""
        while True:
            event = self.receive()
            if event["type"] == "closed":
                raise HiggsTTSError("the session ended before done")
            yield event
            if event["type"] == "done":
                return

    def speak(self, pieces, words_per_second: float | None = None):
        """Send `pieces` (an iterable of text deltas) from a thread, then close; yields the events."""
        failed: list[BaseException] = []

        def feed() -> None:
            try:
                for piece in pieces:
                    self.text(piece)
                    if words_per_second:
                        time.sleep(max(1, len(piece.split())) / words_per_second)
                self.close()
            except BaseException as exc:  # handed to the reader
                failed.append(exc)

        sender = threading.Thread(target=feed, daemon=True)
        sender.start()
        yield from self.events()
        sender.join()
        if failed:
            raise failed[0]

    def __enter__(self) -> LiveSpeech:
        return self

    def __exit__(self, *exc) -> None:
        self.ws.close()


def speak_live(server_url: str, pieces, api_key: str | None = None, **config) -> tuple[bytes, dict]:
    """All the audio of `pieces` (text deltas) spoken live, and the `done` message."""
    audio = bytearray()
    with LiveSpeech(server_url, api_key, **config) as live:
        for event in live.speak(pieces):
            if event["type"] == "audio":
                audio += event["pcm"]
            elif event["type"] == "error":
                raise HiggsTTSError(f"live session: {event.get('message')}", event, event.get("code"))
            elif event["type"] == "done":
                return bytes(audio), event
    raise HiggsTTSError("the session ended before done")


# -- command line ---------------------------------------------------------------------------------

FORMATS = {".wav": "wav", ".flac": "flac", ".mp3": "mp3", ".ogg": "opus", ".opus": "opus", ".aac": "aac",
           ".pcm": "pcm", ".raw": "pcm"}


def _summary(output: dict) -> dict:
    return {key: value for key, value in output.items() if key != "audio_base64"}


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint-url", help="https://api.runpod.ai/v2/ENDPOINT_ID (default: $ENDPOINT_URL)")
    common.add_argument("--api-key", help="RunPod API key (default: $RUNPOD_API_KEY)")
    common.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a job (600)")
    parser = argparse.ArgumentParser(prog="python -m higgs_tts.client",
                                     description="Higgs Audio TTS on a RunPod endpoint.")
    commands = parser.add_subparsers(dest="command", required=True)
    speak = commands.add_parser("speak", parents=[common], help="speech for a text")
    speak.add_argument("text")
    speak.add_argument("--voice", help="voice name, or names 'belinda,chadwick' for SPEAKER0, SPEAKER1")
    speak.add_argument("--scene", help="scene prompt ('' for none)")
    speak.add_argument("--s3-bucket", help="upload to this bucket instead of returning the audio inline")
    speak.add_argument("--out", type=Path, help="audio file to write (format from its suffix unless --format)")
    speak.add_argument("--format", choices=sorted(set(FORMATS.values())), help="output_format")
    speak.add_argument("--seed", type=int)
    speak.add_argument("--max-new-tokens", type=int)
    speak.add_argument("--temperature", type=float)
    speak.add_argument("--option", "-o", type=_option, action="append", default=[], metavar="KEY=VALUE",
                       help="any other request field; VALUE is read as JSON when it parses (repeatable)")
    how = speak.add_mutually_exclusive_group()
    how.add_argument("--async", dest="use_async", action="store_true", help="/run and poll /status")
    how.add_argument("--stream", action="store_true",
                     help="write PCM items into a WAV file as they arrive (worker with STREAMING=1)")
    live = commands.add_parser("live", parents=[common], help="speak text as it is written (higgs-tts serve's "
                               "WebSocket): TEXT, or standard input as it arrives (an LLM piped in)")
    live.add_argument("text", nargs="?", help="the text (default: read standard input piece by piece)")
    live.add_argument("--out", type=Path, required=True, help="WAV file to write")
    live.add_argument("--voice", help="voice name, or names 'belinda,chadwick'")
    live.add_argument("--scene", help="scene prompt (instructions)")
    live.add_argument("--seed", type=int)
    live.add_argument("--max-new-tokens", type=int)
    live.add_argument("--words-per-second", type=float,
                      help="send TEXT a word at a time at this pace, as an LLM writes (default: all at once)")
    live.add_argument("--option", "-o", type=_option, action="append", default=[], metavar="KEY=VALUE",
                      help="any other config field; VALUE is read as JSON when it parses (repeatable)")
    commands.add_parser("health", parents=[common], help="the worker's health as JSON")
    voices = commands.add_parser("voices", parents=[common], help="voice name, kind and description")
    voices.add_argument("--json", action="store_true", help="the list as JSON")
    return parser


def _download(url: str, path: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            path.write_bytes(response.read())
    except urllib.error.URLError as exc:  # HTTPError too
        raise HiggsTTSError(f"download of the uploaded audio failed: {exc}") from None


def _speak(client: HiggsTTSClient, args: argparse.Namespace) -> dict:
    job: dict = {"transcript": args.text}
    for key, value in (("ref_audio", args.voice), ("scene_prompt", args.scene), ("s3_bucket", args.s3_bucket),
                       ("seed", args.seed), ("max_new_tokens", args.max_new_tokens),
                       ("temperature", args.temperature)):
        if value is not None:
            job[key] = value
    job.update(dict(args.option))
    if args.out is None and not args.s3_bucket:
        raise HiggsTTSError("nowhere to put the audio: pass --out FILE (or --s3-bucket BUCKET)")
    if args.stream:  # the items are PCM; --format only names what is uploaded with --s3-bucket
        if args.out is None or args.out.suffix.lower() != ".wav":
            raise HiggsTTSError("--stream writes a WAV file: pass --out FILE.wav")
        if args.format:
            job.setdefault("output_format", args.format)
        return _speak_streamed(client, job, args.out)
    output_format = args.format or (FORMATS.get(args.out.suffix.lower()) if args.out else None)
    if output_format:
        job.setdefault("output_format", output_format)
    output = client.run_async(job) if args.use_async else client.run_sync(job)
    if args.out is not None:
        if "audio_base64" in output:
            client.save_audio(output, args.out)
        elif output.get("presigned_url"):
            _download(output["presigned_url"], args.out, args.timeout)
        else:
            raise HiggsTTSError(f"the audio was uploaded to {output.get('audio_url')} and has no download URL")
        print(f"wrote {args.out} ({output.get('duration_seconds')} s)", file=sys.stderr)
    elif "audio_base64" in output:
        reason = f" (the upload failed: {output['s3_upload_error']})" if output.get("s3_upload_error") else ""
        raise HiggsTTSError(f"the audio came back inline{reason}: pass --out FILE to keep it", output)
    return _summary(output)


def _open_wav(out: Path, sample_rate: int) -> wave.Wave_write:
    wav = wave.open(str(out), "wb")
    wav.setnchannels(1)
    wav.setsampwidth(2)  # the items are 16-bit little-endian mono PCM
    wav.setframerate(sample_rate)
    return wav


def _speak_streamed(client: HiggsTTSClient, job: dict, out: Path) -> dict:
    final: dict = {}
    wav = None  # opened with the first audio item; the header's length is fixed on close
    try:
        for item in client.stream(job):
            if item.get("type") == "audio":
                if wav is None:
                    wav = _open_wav(out, int(item.get("sample_rate") or 24000))
                wav.writeframes(base64.b64decode(item["audio_base64"]))
            else:
                final = item
        if wav is None:  # no audio at all: an empty clip
            wav = _open_wav(out, int(final.get("sample_rate") or 24000))
        wav.close()
    except BaseException:
        if wav is not None:
            with contextlib.suppress(Exception):
                wav.close()
            out.unlink(missing_ok=True)  # no half-written file after a failed stream
        raise
    print(f"wrote {out} ({final.get('duration_seconds')} s, {final.get('audio_items')} items)", file=sys.stderr)
    return _summary(final)


def _stdin_pieces():
    """Standard input as it arrives (not line by line): what a piped LLM has written so far."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while data := os.read(sys.stdin.fileno(), 4096):
        if text := decoder.decode(data):
            yield text
    if tail := decoder.decode(b"", final=True):
        yield tail


def _live(args: argparse.Namespace) -> dict:
    """Speak TEXT (word by word at --words-per-second) or standard input live into a WAV file, and
    report the time from the first complete sentence sent to its first audio."""
    url = args.endpoint_url or os.environ.get("ENDPOINT_URL") or os.environ.get("RUNPOD_ENDPOINT_URL")
    if not url:
        raise ValueError("--endpoint-url (or ENDPOINT_URL) is required: the server, e.g. http://127.0.0.1:8000")
    config: dict = {"response_format": "pcm"}
    for key, value in (("voice", args.voice), ("instructions", args.scene), ("seed", args.seed),
                       ("max_new_tokens", args.max_new_tokens)):
        if value is not None:
            config[key] = value
    config.update(dict(args.option))
    if args.text is None:
        pieces = _stdin_pieces()
    elif args.words_per_second:
        words = args.text.split(" ")
        pieces = (w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words))
    else:
        pieces = iter([args.text])
    api_key = args.api_key if args.api_key is not None else os.environ.get("RUNPOD_API_KEY")
    sent_sentence: list[float] = []

    def watched(source):
        for piece in source:
            if not sent_sentence and any(c in piece for c in ".!?\n"):
                sent_sentence.append(time.perf_counter())
            yield piece

    wav, done, first_audio = None, {}, None
    try:
        with LiveSpeech(url, api_key, timeout=args.timeout, **config) as live:
            wav = _open_wav(args.out, int(live.ready.get("sample_rate") or 24000))
            for event in live.speak(watched(pieces), args.words_per_second):
                if event["type"] == "audio":
                    if first_audio is None:
                        first_audio = time.perf_counter()
                    wav.writeframes(event["pcm"])
                elif event["type"] == "error":
                    raise HiggsTTSError(f"live session: {event.get('message')}", event, event.get("code"))
                else:
                    done = event if event["type"] == "done" else done
        wav.close()
    except BaseException:
        if wav is not None:
            with contextlib.suppress(Exception):
                wav.close()
            args.out.unlink(missing_ok=True)
        raise
    if first_audio is not None and sent_sentence:
        done["client_first_audio_seconds"] = round(max(0.0, first_audio - sent_sentence[0]), 3)
    print(f"wrote {args.out} ({done.get('duration_seconds')} s, {done.get('segments')} phrases; first audio "
          f"{done.get('client_first_audio_seconds')} s after the first sentence was sent)", file=sys.stderr)
    return done


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "live":
        try:
            print(json.dumps(_live(args), indent=2))
            return 0
        except (HiggsTTSError, ValueError, OSError, wave.Error) as exc:  # ConnectionError is an OSError
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        client = HiggsTTSClient(args.endpoint_url, args.api_key, timeout=args.timeout)
        if args.command == "speak":
            result: object = _speak(client, args)
        elif args.command == "health":
            result = client.health()
        elif args.json:
            result = client.list_voices()
        else:
            for voice in client.list_voices():
                print(f"{voice.get('name')}\t{voice.get('kind')}\t{voice.get('description') or ''}")
            return 0
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {client.endpoint_url}: {exc.reason}", file=sys.stderr)
        return 1
    except (HiggsTTSError, ValueError, OSError, wave.Error) as exc:  # timeouts are OSErrors too
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
