"""A dependency-free Python client for the RunPod endpoint (or the local `--rp_serve_api` server).

    from higgs_tts.client import HiggsTTSClient
    client = HiggsTTSClient("https://api.runpod.ai/v2/ENDPOINT_ID", api_key="...")
    result = client.generate_audio("Hello!", voice="belinda", scene_prompt=None, s3_bucket=None)
    client.save_audio(result, "hello.wav")

It uses only the standard library, so it can be copied into any project as one file.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

PENDING = ("IN_QUEUE", "IN_PROGRESS")


def job_output(output: object) -> dict:
    """A job's response. A streaming worker (STREAMING=1) returns the list of what the job yielded;
    its last item is the response."""
    if isinstance(output, list):
        output = output[-1] if output else None
    return output if isinstance(output, dict) else {}


class HiggsTTSError(RuntimeError):
    """The job failed; `output` holds whatever the worker returned with the error."""

    def __init__(self, message: str, output: dict | None = None) -> None:
        super().__init__(message)
        self.output = output or {}


class HiggsTTSClient:
    def __init__(self, endpoint_url: str | None = None, api_key: str | None = None, timeout: float = 600.0) -> None:
        endpoint_url = endpoint_url or os.environ.get("ENDPOINT_URL") or os.environ.get("RUNPOD_ENDPOINT_URL")
        if not endpoint_url:
            raise ValueError("endpoint_url (or ENDPOINT_URL) is required, e.g. https://api.runpod.ai/v2/ENDPOINT_ID")
        self.endpoint_url = endpoint_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("RUNPOD_API_KEY")
        self.timeout = timeout

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
            raise HiggsTTSError(f"HTTP {exc.code} from {path}: {detail}") from None

    def _poll(self, kind: str, job_id: str) -> dict:
        try:
            return self._request("GET", f"/{kind}/{job_id}")
        except HiggsTTSError as exc:
            if "HTTP 405" not in str(exc):
                raise
            return self._request("POST", f"/{kind}/{job_id}")  # the SDK's local server

    def _status(self, job_id: str) -> dict:
        return self._poll("status", job_id)

    def run_sync(self, job_input: dict, poll_seconds: float = 1.0) -> dict:
        """Run one job and return its `output`; raises HiggsTTSError when the job failed."""
        reply = self._request("POST", "/runsync", {"input": job_input})
        deadline = time.monotonic() + self.timeout
        while reply.get("status") in PENDING and time.monotonic() < deadline:
            time.sleep(poll_seconds)
            reply = self._status(reply["id"])
        output = job_output(reply.get("output"))
        if reply.get("status") == "FAILED" or output.get("success") is False:
            raise HiggsTTSError(str(reply.get("error") or output.get("error") or "job failed"), output)
        if reply.get("status") != "COMPLETED":
            raise HiggsTTSError(f"job did not finish: status {reply.get('status')!r}", output)
        return output

    def stream(self, job_input: dict, poll_seconds: float = 0.2):
        """Items of a streaming job (`stream: true`, worker started with STREAMING=1) as they arrive:
        audio items (base64 PCM), then the final response. Raises HiggsTTSError on a failure."""
        job_id = self._request("POST", "/run", {"input": {**job_input, "stream": True}})["id"]
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._poll("stream", job_id)
            for entry in reply.get("stream") or []:
                item = entry.get("output") if isinstance(entry, dict) else None
                if not isinstance(item, dict) or item.get("success") is False:
                    raise HiggsTTSError(str((item or {}).get("error") or "stream failed"), item)
                yield item
            status = reply.get("status")
            if status == "COMPLETED":
                return
            if status not in PENDING or reply.get("error"):
                raise HiggsTTSError(str(reply.get("error") or f"stream ended with status {status!r}"))
            if time.monotonic() > deadline:
                raise HiggsTTSError(f"stream did not finish within {self.timeout:g} s")
            time.sleep(poll_seconds)

    def generate_audio(
        self,
        text: str,
        voice: str | None = None,
        scene_prompt: str | None = None,
        s3_bucket: str | None = None,
        **options,
    ) -> dict:
        """Speech for `text`; extra keyword arguments are passed as request fields (seed, ...)."""
        job = {"transcript": text, **options}
        for key, value in (("ref_audio", voice), ("scene_prompt", scene_prompt), ("s3_bucket", s3_bucket)):
            if value is not None:
                job[key] = value
        return self.run_sync(job)

    def health(self) -> dict:
        return self.run_sync({"action": "health"})

    def list_voices(self) -> list[dict]:
        return self.run_sync({"action": "list_voices"})["voices"]

    def add_voice(self, name: str, audio_path: str | Path, transcript: str, overwrite: bool = False) -> dict:
        audio = base64.b64encode(Path(audio_path).read_bytes()).decode("ascii")
        return self.run_sync({"action": "add_voice", "voice_name": name, "ref_audio_base64": audio,
                              "ref_audio_transcript": transcript, "overwrite": overwrite})

    @staticmethod
    def save_audio(output: dict, path: str | Path) -> Path:
        """Write inline audio to `path` (for uploaded audio, download `presigned_url` instead)."""
        if "audio_base64" not in output:
            raise HiggsTTSError("the result has no inline audio; it was uploaded to " + str(output.get("audio_url")))
        path = Path(path)
        path.write_bytes(base64.b64decode(output["audio_base64"]))
        return path


def generate_audio(text: str, voice: str | None = None, scene_prompt: str | None = None,
                   s3_bucket: str | None = None, **options) -> dict:
    """The documented one-call form, configured by ENDPOINT_URL and RUNPOD_API_KEY."""
    return HiggsTTSClient().generate_audio(text, voice, scene_prompt, s3_bucket, **options)
