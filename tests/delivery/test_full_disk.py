"""A full disk under the voices folder is a named client error, `storage_full` (HTTP 507), on every
surface that writes a voice: the worker's add_voice, /runsync on `higgs-tts serve`, and multipart
`POST /v1/voices`. The old voice stays as it was and nothing half-written is left. A real tmpfs,
filled to its last byte, under real processes."""

import base64
import json

import httpx
import pytest
from conftest import full_disk, running_server, running_worker

from higgs_tts.service.errors import STATUS

pytestmark = pytest.mark.slow  # subprocesses, or over 10 s: not in scripts/test.sh --fast

TRANSCRIPT = "Maintaining your ability to learn."


def voice_files(folder) -> dict[str, bytes]:
    """Every file but the filler and the writers' lock (created empty by the first writer)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name not in ("filler", ".voices.lock")}


@pytest.fixture
def disk(tmp_path, voice_prompts):
    keep = [voice_prompts / "belinda.wav", voice_prompts / "belinda.txt"]
    with full_disk(tmp_path / "voices", keep) as folder:
        yield folder


def add_voice_job(voice_prompts) -> dict:
    clip = (voice_prompts / "chadwick.wav").read_bytes()
    return {"action": "add_voice", "voice_name": "belinda", "overwrite": True, "ref_audio_transcript": TRANSCRIPT,
            "ref_audio_base64": base64.b64encode(clip).decode()}


def test_http_server_answers_507_storage_full(disk, tiny_checkpoint, voice_prompts, tmp_path_factory):
    before = voice_files(disk)
    assert STATUS["storage_full"] == 507
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, VOICE_PROMPTS_PATH=str(disk),
                        PRELOAD_MODEL="0") as url:
        upload = httpx.post(url + "/v1/voices", timeout=120,
                            data={"name": "belinda", "transcript": TRANSCRIPT, "overwrite": "true"},
                            files={"file": ("clip.wav", (voice_prompts / "chadwick.wav").read_bytes(), "audio/wav")})
        assert upload.status_code == 507, upload.text
        error = upload.json()["error"]
        assert error["code"] == "storage_full" and "full" in error["message"]
        job = httpx.post(url + "/runsync", json={"input": add_voice_job(voice_prompts)}, timeout=120).json()
        assert job["status"] == "FAILED" and job["output"]["error_code"] == "storage_full"
        # the old voice is still the one served, whole
        voice = httpx.get(url + "/v1/voices/belinda", timeout=60).json()
        assert voice["transcript"] == (voice_prompts / "belinda.txt").read_text().strip()
    assert voice_files(disk) == before  # no temporary file, nothing of the new voice, the old one unchanged


def test_worker_answers_storage_full(disk, tiny_checkpoint, voice_prompts, s3_server, tmp_path_factory):
    before = voice_files(disk)
    with running_worker(tiny_checkpoint, voice_prompts, s3_server, tmp_path_factory, VOICE_PROMPTS_PATH=str(disk),
                        PRELOAD_MODEL="0") as worker:
        job = httpx.post(worker["url"] + "/runsync", json={"input": add_voice_job(voice_prompts)}, timeout=120).json()
        log = worker["log"]
        log.flush()
        log.seek(0)
        audit = [json.loads(line[line.index("{"):]) for line in log.read().splitlines() if '"event": "job"' in line]
    # the SDK's local API passes on the message only; the code is in the job's audit line
    assert job["status"] == "FAILED" and "the voices folder is full" in job["error"], job
    assert [(a["action"], a["error_code"]) for a in audit] == [("add_voice", "storage_full")]
    assert voice_files(disk) == before
