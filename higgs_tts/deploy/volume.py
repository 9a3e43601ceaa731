"""Network-volume setup: the model, the codec and the voice prompts in the layout the image expects.

    python -m higgs_tts.deploy.volume --volume-dir /runpod-volume          (scripts/setup-network-volume.sh)

    VOLUME_DIR/models/higgs-audio-v2-generation-3B-base    MODEL_PATH (native layout)
    VOLUME_DIR/models/higgs-audio-v2-tokenizer             TOKENIZER_PATH
    VOLUME_DIR/voice_prompts                               VOICE_PROMPTS_PATH
    VOLUME_DIR/hf-cache                                    HF_HOME (downloads land here first)

Downloads go through huggingface_hub into the HF cache on the volume, then are hard-linked into the
layout (no second copy). Each installed folder gets a `.higgs-tts.json` record (repo, revision,
file sizes); a later run that finds a matching record and files makes no network call at all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..core.checkpoint import CheckpointError, layout
from ..settings import DEFAULT_MODEL, DEFAULT_REVISION, DEFAULT_TOKENIZER

log = logging.getLogger("higgs_tts.volume")

MODEL_REPO, TOKENIZER_REPO = DEFAULT_MODEL, DEFAULT_TOKENIZER  # settings.py's, the ones the worker loads
RECORD = ".higgs-tts.json"

# The public example voices (Apache-2.0) at a pinned commit of boson-ai/higgs-audio, with the
# SHA-256 of the copies this project was tested with.
VOICES_URL = "https://raw.githubusercontent.com/boson-ai/higgs-audio/{commit}/examples/voice_prompts/{name}"
VOICES_COMMIT = "96fc7a0886a06ce4cb4364cf17e069b8ed5fc387"
VOICE_FILES = {
    "belinda.wav": "e663310bfe539efac3350fd6b277214dcddd65d5a46949180f11c719c8b9b769",
    "belinda.txt": "f7fa48f33b22b6ce75cb4d81e8411d555a43404307b303e6d45ee7f93c663ae0",
    "broom_salesman.wav": "c9cb4f37dcac12227045845c07c8aef823519cbf7b62bcbc6223158f9d282e1a",
    "broom_salesman.txt": "5e795c2a0be479fe2e53bce4db009600c23b1e8214f2c00291ff86512b694cb6",
    "chadwick.wav": "166acd9a8d8bf3e205bf8217dfd47f8232437c0ea128c326bd1a9060c099e003",
    "chadwick.txt": "4a5bca11bb88992322f678aff39cdeb6e1afec28cfe517200406c23698545396",
    "en_man.wav": "1ca3df71ad1b6968765e69870220d34c6b2c2550a499cf59560d9d764d10b94e",
    "en_man.txt": "20c5e6b6fa38b9b24a58f203c17989c14ac22bd8093c4bf56d1a58d435a7ecc3",
    "en_woman.wav": "e1d49dc69f3b0731ed7b10ddf51dfc8f73465d4323f45841d93583d8b1e4d3e6",
    "en_woman.txt": "acffc42ea6c91ce8c58a608d8f9182c3916ecb6b9835c1f4301daf6cf34de2da",
    "zh_man_sichuan.wav": "53892ece071342958403bc5643f84169a30b89cc0fc79eb69508bfa11dd85e68",
    "zh_man_sichuan.txt": "de0841a4087d763daa2669e9f6036bc374b5871e02a31bc3509887a5c74dc7f5",
    "profile.yaml": "7752f5000bf401edeb88baffc39e3356d6ac53ceb47875d659ee686986f2dcb2",
}


class SetupError(RuntimeError):
    """A setup step that cannot go on; the message says what to do."""


@dataclass(frozen=True)
class VolumeLayout:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "models" / "higgs-audio-v2-generation-3B-base"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "models" / "higgs-audio-v2-tokenizer"

    @property
    def voices_dir(self) -> Path:
        return self.root / "voice_prompts"

    @property
    def hf_cache(self) -> Path:
        return self.root / "hf-cache" / "hub"


@dataclass(frozen=True)
class Checkpoint:
    """One Hugging Face repo to install: the model or the codec."""

    kind: str  # "model" or "tokenizer"
    repo: str
    revision: str
    target: Path


# -- checks ---------------------------------------------------------------------------------------


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"cannot create {folder}: {exc.strerror}; is the volume mounted and writable?") from None
    if not os.access(folder, os.W_OK):
        raise SetupError(f"{folder} is not writable by uid {os.getuid()}; fix its permissions or run as its owner")


def check_space(folder: Path, needed_bytes: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise SetupError(f"{folder} has {free / 1e9:.1f} GB free; {needed_bytes / 1e9:.1f} GB are needed")


def _layout(kind: str, folder: Path) -> str:
    """'native' or 'legacy' (core.checkpoint.layout), as a SetupError when neither."""
    try:
        return layout(folder, "model" if kind == "model" else "codec")
    except CheckpointError as exc:
        raise SetupError(str(exc)) from None


def _files(folder: Path) -> dict[str, int]:
    """Every file below `folder` (but the record and hub metadata) with its size."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != RECORD and ".cache" not in p.relative_to(folder).parts
    }


def verify_checkpoint(kind: str, folder: Path) -> dict[str, int]:
    """The files of an installed native checkpoint; raises SetupError naming what is wrong."""
    if _layout(kind, folder) != "native":
        raise SetupError(f"{folder}: still in the legacy layout after installing")
    files = _files(folder)
    empty = [name for name, size in files.items() if size == 0]
    if empty:
        raise SetupError(f"{folder}: empty files {', '.join(empty)}; delete the folder and run the setup again")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        missing = sorted(s for s in shards if s not in files)
        if missing:
            raise SetupError(f"{folder}: weight shards missing: {', '.join(missing)}")
    elif "model.safetensors" not in files:
        raise SetupError(f"{folder}: no model.safetensors (nor an index of shards)")
    if kind == "model":
        missing = [f for f in ("tokenizer.json", "tokenizer_config.json") if f not in files]
        if missing:
            raise SetupError(f"{folder}: text tokenizer files missing: {', '.join(missing)}")
    return files


def _record_matches(checkpoint: Checkpoint) -> bool:
    record_file = checkpoint.target / RECORD
    if not record_file.is_file():
        return False
    try:
        record = json.loads(record_file.read_text())
    except json.JSONDecodeError:
        return False
    if (record.get("repo"), record.get("revision")) != (checkpoint.repo, checkpoint.revision):
        return False
    return _files(checkpoint.target) == record.get("files")


# -- download and install -------------------------------------------------------------------------


def _repo_sizes(repo: str, revision: str, token: str | None) -> dict[str, int] | None:
    """File sizes the Hub lists for the revision; None when offline."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        info = HfApi(token=token).model_info(repo, revision=revision, files_metadata=True)
    except OfflineModeIsEnabled:
        return None
    except Exception as exc:  # noqa: BLE001 - reported with the reason; the download would fail the same way
        raise SetupError(_hub_error(repo, revision, exc)) from None
    return {s.rfilename: s.size for s in info.siblings or [] if s.size is not None}


def _hub_error(repo: str, revision: str, exc: Exception) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        return f"{repo} needs an accepted licence and a token: set HF_TOKEN"
    if isinstance(exc, RevisionNotFoundError):
        return f"{repo} has no revision {revision!r}"
    if isinstance(exc, RepositoryNotFoundError):
        return f"{repo} was not found (or is private: set HF_TOKEN)"
    return f"cannot reach the Hugging Face Hub for {repo}@{revision}: {type(exc).__name__}: {exc}"


def _download(checkpoint: Checkpoint, cache_dir: Path, token: str | None) -> Path:
    from huggingface_hub import snapshot_download

    sizes = _repo_sizes(checkpoint.repo, checkpoint.revision, token)
    if sizes:
        check_space(cache_dir, int(sum(sizes.values()) * 1.05))
    try:
        snapshot = Path(snapshot_download(checkpoint.repo, revision=checkpoint.revision, cache_dir=cache_dir,
                                          token=token))
    except Exception as exc:  # noqa: BLE001
        raise SetupError(_hub_error(checkpoint.repo, checkpoint.revision, exc)) from None
    if sizes:  # the Hub's sizes, checked against what landed
        for name, size in sizes.items():
            path = snapshot / name
            if path.is_file() and path.stat().st_size != size:
                raise SetupError(f"{checkpoint.repo}/{name}: {path.stat().st_size} bytes, expected {size}")
    return snapshot


def _link_tree(source: Path, target: Path) -> None:
    """Hard links of every file (the cache's blobs), copies where links are not possible."""
    for path in sorted(source.rglob("*")):
        if not path.is_file() or ".cache" in path.relative_to(source).parts:
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        real = path.resolve()
        try:
            os.link(real, destination)
        except OSError:
            shutil.copy2(real, destination)


def install_checkpoint(checkpoint: Checkpoint, cache_dir: Path, token: str | None = None) -> str:
    """Install one checkpoint; returns "up to date", "installed" or "converted"."""
    if _record_matches(checkpoint):
        return "up to date"
    snapshot = _download(checkpoint, cache_dir, token)
    staging = checkpoint.target.with_name(checkpoint.target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    legacy = _layout(checkpoint.kind, snapshot) == "legacy"
    if legacy:
        _convert_legacy(checkpoint.kind, snapshot, staging)
    else:
        _link_tree(snapshot, staging)
    files = verify_checkpoint(checkpoint.kind, staging)
    record = {"repo": checkpoint.repo, "revision": checkpoint.revision, "converted": legacy, "files": files}
    (staging / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    if checkpoint.target.exists():
        shutil.rmtree(checkpoint.target)
    staging.rename(checkpoint.target)
    return "converted" if legacy else "installed"


def _convert_legacy(kind: str, source: Path, destination: Path) -> None:
    """The legacy release (boson_multimodal's layout) into the native one, offline."""
    from ..tools.convert import convert_codec, convert_model

    destination.mkdir(parents=True)
    try:
        summary = convert_model(source, destination) if kind == "model" else convert_codec(source, destination)
    except (CheckpointError, OSError, ValueError) as exc:
        shutil.rmtree(destination, ignore_errors=True)
        raise SetupError(f"converting the legacy {kind} of {source} failed: {exc}") from None
    print(f"{kind}: converted the legacy layout ({summary})", flush=True)


# -- voices ---------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except urllib.error.URLError as exc:
        raise SetupError(f"cannot download {url}: {exc.reason}; set VOICES_SOURCE to a local folder") from None


def install_voices(target: Path, source: str | None = None, commit: str = VOICES_COMMIT) -> list[str]:
    """Copy the example voices from `source` (a folder) or download them at the pinned commit.

    Files already present with the expected content are left alone; voices users added are kept.
    Returns the names written.
    """
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, digest in VOICE_FILES.items():
        path = target / name
        if path.is_file() and _sha256(path.read_bytes()) == digest:
            continue
        if source:
            origin = Path(source) / name
            if not origin.is_file():
                raise SetupError(f"VOICES_SOURCE {source} has no {name}")
            data = origin.read_bytes()
        else:
            data = _fetch(VOICES_URL.format(commit=commit, name=name))
        if _sha256(data) != digest:
            log.warning("voice file %s differs from the copy this project was tested with", name)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)
        written.append(name)
    return written


# -- RunPod's S3-compatible API -------------------------------------------------------------------


def runpod_s3_endpoint(region: str) -> str:
    return f"https://s3api-{region.lower()}.runpod.io/"


def upload_to_network_volume(layout: VolumeLayout, volume_id: str, region: str, access_key: str, secret_key: str,
                             endpoint: str | None = None) -> tuple[int, int]:
    """Upload models and voices (not the HF cache) to the volume; files already there with the same
    size are skipped. Returns (uploaded, skipped)."""
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3", endpoint_url=endpoint or runpod_s3_endpoint(region), region_name=region,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
    )
    transfer = TransferConfig(multipart_chunksize=64 * 1024 * 1024)
    try:
        existing = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=volume_id):
            existing.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        uploaded = skipped = 0
        for folder in (layout.model_dir, layout.tokenizer_dir, layout.voices_dir):
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                key = path.relative_to(layout.root).as_posix()
                if existing.get(key) == path.stat().st_size:
                    skipped += 1
                    continue
                client.upload_file(str(path), volume_id, key, Config=transfer)
                uploaded += 1
    except (BotoCoreError, ClientError) as exc:
        raise SetupError(f"upload to network volume {volume_id} ({region}) failed: {exc}") from None
    return uploaded, skipped


# -- command line ---------------------------------------------------------------------------------


MOUNT_POINTS = ("/runpod-volume", "/workspace")  # serverless workers, pods


def default_volume_dir() -> Path:
    """Where the network volume is mounted: /runpod-volume on serverless workers, /workspace on
    pods (RunPod's default mount path). Refuses to guess when neither is a mount point, because
    writing to the container disk would silently lose everything."""
    for candidate in MOUNT_POINTS:
        if os.path.ismount(candidate):
            return Path(candidate)
    raise SetupError(f"no network volume is mounted at {' or '.join(MOUNT_POINTS)}; attach it, or set VOLUME_DIR "
                     "(--volume-dir) to the folder to fill, e.g. a local folder to upload with --upload")


def setup(args: argparse.Namespace) -> dict:
    layout = VolumeLayout(Path(args.volume_dir) if args.volume_dir else default_volume_dir())
    check_writable(layout.root)
    token = os.environ.get("HF_TOKEN") or None
    cache = Path(os.environ.get("HF_HUB_CACHE") or layout.hf_cache)
    check_writable(cache)
    report = {"volume_dir": str(layout.root)}
    for checkpoint in (
        Checkpoint("model", args.model_repo, args.model_revision, layout.model_dir),
        Checkpoint("tokenizer", args.tokenizer_repo, args.tokenizer_revision, layout.tokenizer_dir),
    ):
        print(f"{checkpoint.kind}: {checkpoint.repo}@{checkpoint.revision} -> {checkpoint.target}", flush=True)
        report[checkpoint.kind] = install_checkpoint(checkpoint, cache, token)
        print(f"{checkpoint.kind}: {report[checkpoint.kind]}", flush=True)
    written = install_voices(layout.voices_dir, args.voices_source)
    report["voices"] = f"{len(written)} file(s) written" if written else "up to date"
    print(f"voices: {report['voices']} in {layout.voices_dir}", flush=True)
    if args.upload:
        volume_id = os.environ.get("NETWORK_VOLUME_ID")
        region = os.environ.get("RUNPOD_S3_REGION")
        access = os.environ.get("RUNPOD_S3_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("RUNPOD_S3_SECRET_KEY") or os.environ.get("AWS_SECRET_ACCESS_KEY")
        missing = [n for n, v in (("NETWORK_VOLUME_ID", volume_id), ("RUNPOD_S3_REGION", region),
                                  ("RUNPOD_S3_ACCESS_KEY", access), ("RUNPOD_S3_SECRET_KEY", secret)) if not v]
        if missing:
            raise SetupError(f"--upload needs {', '.join(missing)} (RunPod console: Settings > S3 API keys)")
        uploaded, skipped = upload_to_network_volume(layout, volume_id, region, access, secret,
                                                     os.environ.get("RUNPOD_S3_ENDPOINT") or None)
        report["upload"] = f"{uploaded} uploaded, {skipped} already there"
        print(f"upload: {report['upload']} (volume {volume_id})", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m higgs_tts.deploy.volume", description=__doc__.split("\n")[0])
    parser.add_argument("--volume-dir", default=os.environ.get("VOLUME_DIR") or None,
                        help="default: the mounted network volume (/runpod-volume or /workspace)")
    parser.add_argument("--model-repo", default=os.environ.get("MODEL_REPO", MODEL_REPO))
    parser.add_argument("--model-revision", default=os.environ.get("MODEL_REVISION", DEFAULT_REVISION))
    parser.add_argument("--tokenizer-repo", default=os.environ.get("TOKENIZER_REPO", TOKENIZER_REPO))
    parser.add_argument("--tokenizer-revision", default=os.environ.get("TOKENIZER_REVISION", DEFAULT_REVISION))
    parser.add_argument("--voices-source", default=os.environ.get("VOICES_SOURCE") or None,
                        help="a local folder with the example voices instead of downloading them")
    parser.add_argument("--upload", action="store_true",
                        help="then upload to NETWORK_VOLUME_ID through RunPod's S3-compatible API")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = setup(args)
    except SetupError as exc:
        print(f"setup-network-volume: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
