"""A dependency-free Python client for the RunPod endpoint (or the local `--rp_serve_api` server).

    from higgs_tts.client import HiggsTTSClient
    client = HiggsTTSClient("https://api.runpod.ai/v2/ENDPOINT_ID", api_key="...")
    result = client.generate_audio("Hello!", voice="belinda", scene_prompt=None, s3_bucket=None)
    client.save_audio(result, "hello.wav")

From a shell (ENDPOINT_URL and RUNPOD_API_KEY, or --endpoint-url and --api-key):

    python -m higgs_tts.client speak "Hello!" --voice belinda --out hello.wav [--async] [--stream]
    python -m higgs_tts.client health
    python -m higgs_tts.client voices

It uses only the standard library, so it can be copied into any project as one file
(`python client.py speak ...` then works the same way).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import time
import urllib.error
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
