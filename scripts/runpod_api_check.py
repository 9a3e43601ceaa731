"""The cases of scripts/test-runpod-api.sh (standard library only, using higgs_tts/client.py as a file)."""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("higgs_client", HERE.parent / "higgs_tts" / "client.py")
client_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(client_module)

QUICK = {"max_new_tokens": int(os.environ.get("MAX_NEW_TOKENS", "200")), "seed": 7}
LONG_TEXT = " ".join(
    ["The endpoint reads this longer text in several chunks, one sentence group at a time."] * 4
)


def save(output: dict, name: str, out_dir: Path) -> str:
    if "audio_base64" in output:
        path = out_dir / f"{name}.{output.get('output_format', 'wav')}"
        path.write_bytes(base64.b64decode(output["audio_base64"]))
        return str(path)
    return output.get("audio_url", "")


def check_audio(output: dict) -> str:
    if not output.get("success"):
        raise AssertionError(f"success is {output.get('success')!r}")
    if output.get("sample_rate") != 24000 or not output.get("duration_seconds"):
        raise AssertionError(f"unexpected audio: {output.get('sample_rate')} Hz, {output.get('duration_seconds')} s")
    return f"{output['duration_seconds']:.2f} s of audio, rtf {output['generation_metrics']['real_time_factor']}"


def main() -> int:
    client = client_module.HiggsTTSClient(os.environ["ENDPOINT_URL"], os.environ.get("RUNPOD_API_KEY"),
                                          timeout=float(os.environ.get("TIMEOUT_SECONDS", "900")))
    out_dir = Path(os.environ.get("OUT_DIR", "api-test-output"))
    out_dir.mkdir(parents=True, exist_ok=True)
    bucket = os.environ.get("S3_BUCKET")

    def health():
        output = client.health()
        if output.get("status") != "healthy":
            raise AssertionError(f"status {output.get('status')!r}")
        return f"device {output['model_info']['device']}, {len(output['voice_suggestions'])} voices"

    def basic():
        output = client.generate_audio("Hello! This is a test of the text to speech endpoint.", **QUICK)
        return f"{check_audio(output)} -> {save(output, 'basic', out_dir)}"

    def clone_scene():
        output = client.generate_audio("This voice was cloned from a short reference clip.", voice="belinda",
                                       scene_prompt="Audio is recorded from a quiet room.", **QUICK)
        if output["metadata"]["voice_clone"] != "belinda":
            raise AssertionError(f"voice_clone is {output['metadata']['voice_clone']!r}")
        return f"{check_audio(output)} -> {save(output, 'clone_scene', out_dir)}"

    def long_text():
        output = client.generate_audio(LONG_TEXT, voice="en_man", chunk_method="word", chunk_max_word_num=20,
                                       **QUICK)
        chunks = output["generation_metrics"]["chunks_processed"]
        if chunks < 2:
            raise AssertionError(f"{chunks} chunk(s) processed; expected several")
        return f"{chunks} chunks, {check_audio(output)} -> {save(output, 'long_text', out_dir)}"

    def s3_upload():
        output = client.generate_audio("This clip goes to object storage.", s3_bucket=bucket, output_format="mp3",
                                       **QUICK)
        if "s3_upload_error" in output or not output.get("presigned_url"):
            raise AssertionError(f"upload failed: {output.get('s3_upload_error', 'no presigned_url')}")
        with urllib.request.urlopen(output["presigned_url"], timeout=60) as response:
            data = response.read()
        (out_dir / "s3_upload.mp3").write_bytes(data)
        return f"{output['audio_url']} ({len(data)} bytes downloaded)"

    def bad_request():
        try:
            client.generate_audio("x", voice="../etc/passwd")
        except client_module.HiggsTTSError as exc:
            if "ref_audio" not in str(exc):
                raise AssertionError(f"the error does not name the field: {exc}") from None
            return f"refused: {str(exc)[:80]}"
        raise AssertionError("a bad voice name was accepted")

    cases = [("health", health), ("basic speech", basic), ("clone + scene", clone_scene),
             ("long text", long_text), ("bad request", bad_request)]
    if bucket:
        cases.insert(4, ("s3 upload", s3_upload))
    else:
        print("SKIP s3 upload (set S3_BUCKET to run it)")
    failed = 0
    for name, case in cases:
        started = time.monotonic()
        try:
            detail = case()
            print(f"PASS {name} ({time.monotonic() - started:.1f} s): {detail}", flush=True)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the next case runs
            failed += 1
            print(f"FAIL {name} ({time.monotonic() - started:.1f} s): {type(exc).__name__}: {exc}", flush=True)
    print(f"{len(cases) - failed}/{len(cases)} passed; audio in {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
