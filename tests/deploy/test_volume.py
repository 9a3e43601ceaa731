"""scripts/setup-network-volume.sh on a fake volume, from a local HF cache in offline mode."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, make_bucket

from higgs_tts.deploy.volume import MODEL_REPO, TOKENIZER_REPO, SetupError, VolumeLayout, check_space

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

SCRIPT = REPO / "scripts" / "setup-network-volume.sh"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo: str, folder: Path) -> Path:
    """`folder` laid out as huggingface_hub caches a download: blobs, snapshot links, refs/main."""
    storage = root / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / COMMIT
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(COMMIT)
    return storage


@pytest.fixture
def cache(tiny_checkpoint, tmp_path):
    model_dir, codec_dir = tiny_checkpoint
    root = tmp_path / "hf-cache"
    hub_cache(root, MODEL_REPO, model_dir)
    hub_cache(root, TOKENIZER_REPO, codec_dir)
    return root


def setup_volume(volume: Path, cache: Path, voice_prompts: Path, *extra: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([str(SCRIPT), "--volume-dir", str(volume), "--voices-source", str(voice_prompts), *extra],
                          env=environment, capture_output=True, text=True, timeout=300)


def test_setup_installs_the_layout_the_image_expects(cache, voice_prompts, tmp_path, tiny_checkpoint):
    volume = tmp_path / "volume"
    run = setup_volume(volume, cache, voice_prompts)
    assert run.returncode == 0, run.stderr
    layout = VolumeLayout(volume)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["model"] == report["tokenizer"] == "installed"
    for installed, original in ((layout.model_dir, tiny_checkpoint[0]), (layout.tokenizer_dir, tiny_checkpoint[1])):
        for path in original.rglob("*"):
            if path.is_file():
                copy = installed / path.relative_to(original)
                assert copy.read_bytes() == path.read_bytes()
        record = json.loads((installed / ".higgs-tts.json").read_text())
        assert record["revision"] == "main" and record["files"]
    weights = layout.model_dir / "model.safetensors"
    assert weights.stat().st_nlink >= 2  # a hard link to the cache's blob, not a second copy
    assert sorted(p.name for p in layout.voices_dir.iterdir()) == sorted(p.name for p in voice_prompts.iterdir())

    # The worker loads what was installed.
    from higgs_tts.core.checkpoint import load_model
    from higgs_tts.settings import Settings

    loaded = load_model(Settings(model_path=str(layout.model_dir), tokenizer_path=str(layout.tokenizer_dir),
                                 voice_prompts_path=layout.voices_dir, device="cpu"))
    assert loaded.sample_rate == 24000

    # A second run, even with the cache gone, finds everything in place and downloads nothing.
    shutil.rmtree(cache)
    again = setup_volume(volume, tmp_path / "empty-cache", voice_prompts)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout.strip().splitlines()[-1])
    assert report["model"] == report["tokenizer"] == report["voices"] == "up to date"


def test_a_changed_file_is_installed_again(cache, voice_prompts, tmp_path):
    volume = tmp_path / "volume"
    assert setup_volume(volume, cache, voice_prompts).returncode == 0
    (VolumeLayout(volume).tokenizer_dir / "model.safetensors").unlink()  # e.g. an interrupted copy
    run = setup_volume(volume, cache, voice_prompts)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["tokenizer"] == "installed"
    assert (VolumeLayout(volume).tokenizer_dir / "model.safetensors").stat().st_size > 0


def test_offline_without_the_revision_fails_naming_the_repo(cache, voice_prompts, tmp_path):
    run = setup_volume(tmp_path / "volume", cache, voice_prompts, "--model-revision", "v9")
    assert run.returncode == 1
    assert MODEL_REPO in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "volume" / "models" / "higgs-audio-v2-generation-3B-base").exists()


def test_wrong_model_type_is_refused(tmp_path, voice_prompts, tiny_checkpoint):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_checkpoint[0], odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    cache = tmp_path / "cache"
    hub_cache(cache, MODEL_REPO, odd)
    run = setup_volume(tmp_path / "volume", cache, voice_prompts)
    assert run.returncode == 1 and "model_type 'llama'" in run.stderr


def test_unwritable_volume_and_missing_python_are_clear(tmp_path, voice_prompts):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = setup_volume(blocker / "volume", tmp_path, voice_prompts)
    assert run.returncode == 1 and "cannot create" in run.stderr
    run = setup_volume(tmp_path / "v", tmp_path, voice_prompts, PYTHON=str(tmp_path / "no-python"))
    assert run.returncode == 1 and "no Python with higgs_tts" in run.stderr
    run = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert run.returncode == 2 and "unknown argument --bogus" in run.stderr


def test_missing_space_is_reported(tmp_path):
    with pytest.raises(SetupError, match="GB free"):
        check_space(tmp_path, 10**18)


def test_upload_through_the_s3_api(cache, voice_prompts, tmp_path, s3_server):
    make_bucket(s3_server, "volume123")
    volume = tmp_path / "volume"
    env = {"NETWORK_VOLUME_ID": "volume123", "RUNPOD_S3_REGION": "EUR-IS-1",
           "RUNPOD_S3_ACCESS_KEY": s3_server["AWS_ACCESS_KEY_ID"],
           "RUNPOD_S3_SECRET_KEY": s3_server["AWS_SECRET_ACCESS_KEY"],
           "RUNPOD_S3_ENDPOINT": s3_server["AWS_ENDPOINT_URL"]}
    run = setup_volume(volume, cache, voice_prompts, "--upload", **env)
    assert run.returncode == 0, run.stderr
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"])
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="volume123")["Contents"]}
    assert "models/higgs-audio-v2-generation-3B-base/model.safetensors" in keys
    assert "voice_prompts/belinda.wav" in keys and not any(k.startswith("hf-cache") for k in keys)
    body = client.get_object(Bucket="volume123", Key="voice_prompts/belinda.txt")["Body"].read()
    assert body == (voice_prompts / "belinda.txt").read_bytes()
    again = setup_volume(volume, cache, voice_prompts, "--upload", **env)
    assert json.loads(again.stdout.strip().splitlines()[-1])["upload"].startswith("0 uploaded")
    missing = setup_volume(volume, cache, voice_prompts, "--upload")
    assert missing.returncode == 1 and "NETWORK_VOLUME_ID" in missing.stderr


def test_a_legacy_model_is_converted_while_installing(tiny_checkpoint, voice_prompts, tmp_path):
    from safetensors.torch import load_file
    from tools.test_convert import write_legacy_model

    legacy = tmp_path / "legacy"
    write_legacy_model(tiny_checkpoint[0], legacy)
    cache = tmp_path / "cache"
    hub_cache(cache, MODEL_REPO, legacy)
    hub_cache(cache, TOKENIZER_REPO, tiny_checkpoint[1])
    volume = tmp_path / "volume"
    run = setup_volume(volume, cache, voice_prompts)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["model"] == "converted"
    installed = VolumeLayout(volume).model_dir
    assert json.loads((installed / "config.json").read_text())["model_type"] == "higgs_audio_v2"
    converted = {}
    for shard in installed.glob("*.safetensors"):
        converted.update(load_file(shard))
    original = load_file(tiny_checkpoint[0] / "model.safetensors")
    assert converted.keys() >= original.keys(), set(original) - set(converted)
    assert all(converted[k].equal(original[k]) for k in original)
