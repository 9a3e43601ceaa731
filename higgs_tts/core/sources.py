"""Where a checkpoint comes from, found without a network call.

A MODEL_PATH / TOKENIZER_PATH that is a folder is used as it is. A Hugging Face repo id (the
default) is looked for, in this order:

    volume        MODELS_DIR/NAME: the network volume's copy (scripts/setup-network-volume.sh), NAME
                  being the repo's name (models/higgs-audio-v2-generation-3B-base); not for a pinned revision
    runpod-cache  RUNPOD_MODEL_CACHE: RunPod's cached models, a Hugging Face cache
                  (/runpod-volume/huggingface-cache/hub/models--ORG--NAME/snapshots/COMMIT/)
    hf-cache      the Hugging Face cache (HF_HUB_CACHE, or HF_HOME/hub)
    download      none of these: downloaded into the Hugging Face cache (refused with HF_HUB_OFFLINE=1)

The caches are read with `local_files_only`, so a cached snapshot loads with no network call even
when the Hub is reachable; `refs/main` (or the pinned revision) picks the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..settings import Settings

ORIGINS = ("folder", "volume", "runpod-cache", "hf-cache", "download")


@dataclass(frozen=True)
class Source:
    origin: str  # one of ORIGINS
    path: Path | None  # the folder; None for "download" (not on this machine yet)

    def describe(self) -> dict:
        """For health: {"origin", "path"}."""
        return {"origin": self.origin, "path": None if self.path is None else str(self.path)}


def looks_like_repo_id(path_or_repo: str) -> bool:
    return not path_or_repo.startswith(("/", ".", "~")) and path_or_repo.count("/") == 1


def _cached_snapshot(repo_id: str, revision: str | None, cache_dir: Path | None) -> Path | None:
    """The snapshot folder of `repo_id` in a Hugging Face cache (None: the default cache), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, cache_dir=cache_dir,
                                      local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None


def find(path_or_repo: str, revision: str | None, settings: Settings) -> Source:
    """Where `path_or_repo` loads from, looking only at this machine's files. A path that is neither
    a folder nor a repo id comes back as a "folder" source whose path does not exist."""
    local = Path(path_or_repo).expanduser()
    if local.is_dir() or not looks_like_repo_id(path_or_repo):
        return Source("folder", local)
    if settings.models_dir is not None and revision is None:
        copy = settings.models_dir / path_or_repo.split("/")[1]
        if (copy / "config.json").is_file() or (copy / "model.pth").is_file():
            return Source("volume", copy)
    runpod = settings.runpod_model_cache
    if runpod is not None and (runpod / ("models--" + path_or_repo.replace("/", "--"))).is_dir():
        snapshot = _cached_snapshot(path_or_repo, revision, runpod)
        if snapshot is not None:
            return Source("runpod-cache", snapshot)
    snapshot = _cached_snapshot(path_or_repo, revision, None)
    return Source("hf-cache", snapshot) if snapshot is not None else Source("download", None)


def sources(settings: Settings) -> dict[str, Source]:
    """The model's and the codec's sources (health reports them)."""
    return {"model": find(settings.model_path, settings.model_revision, settings),
            "tokenizer": find(settings.tokenizer_path, settings.tokenizer_revision, settings)}
