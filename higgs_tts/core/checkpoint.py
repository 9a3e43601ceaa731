"""Locate, check and load a Higgs Audio V2 checkpoint on transformers' native classes."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..settings import Settings
from .sources import find, looks_like_repo_id

log = logging.getLogger(__name__)

NATIVE_MODEL_TYPE = "higgs_audio_v2"
NATIVE_CODEC_TYPE = "higgs_audio_v2_tokenizer"
LEGACY_MODEL_TYPE = "higgs_audio"
CONVERT_COMMAND = "higgs-tts convert-checkpoint"


class CheckpointError(RuntimeError):
    """The checkpoint cannot be found or is not in a format this package loads."""


def unavailable_reason(path_or_repo: str, revision: str | None = None, settings: Settings | None = None) -> str | None:
    """None when the checkpoint loads without a download; otherwise why it would not."""
    local = Path(path_or_repo).expanduser()
    if local.is_dir():
        return None if (local / "config.json").is_file() else f"{path_or_repo} has no config.json"
    if not looks_like_repo_id(path_or_repo):
        return f"{path_or_repo} does not exist"
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(path_or_repo)
    except HFValidationError:
        return f"{path_or_repo} is neither a folder nor a Hugging Face repo id"
    if find(path_or_repo, revision, settings or Settings()).path is None:
        return f"{path_or_repo} is not in the Hugging Face cache yet"
    return None


def resolve_path(path_or_repo: str, revision: str | None = None, settings: Settings | None = None) -> Path:
    """A local folder as is; otherwise a Hugging Face repo id, from the first place that holds it
    (core/sources.py: the volume's copy, RunPod's cached models, the HF cache), else downloaded."""
    local = Path(path_or_repo).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise CheckpointError(f"{path_or_repo} is a file; expected a checkpoint folder or a repo id")
    if not looks_like_repo_id(path_or_repo):
        raise CheckpointError(f"checkpoint folder {path_or_repo} does not exist")
    source = find(path_or_repo, revision, settings or Settings())
    if source.path is not None:
        return source.path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=path_or_repo, revision=revision))
    except Exception as exc:  # network, auth, or missing from an offline cache
        raise CheckpointError(
            f"cannot get {path_or_repo} from the Hugging Face Hub or its cache ({type(exc).__name__}: {exc}); "
            "download it first or point the path at a local folder"
        ) from exc


def read_config(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not folder.exists():
        raise CheckpointError(f"{folder} does not exist")
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no config.json; not a Higgs Audio V2 checkpoint")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} does not hold a JSON object")
    return config


def layout(folder: Path, kind: str) -> str:
    """'native' or 'legacy' for a `kind` "model" or "codec" folder; anything else is refused.

    The one test of a checkpoint's layout, used by loading, conversion and volume setup.
    """
    if kind == "codec" and not (folder / "config.json").is_file() and (folder / "model.pth").is_file():
        return "legacy"
    config = read_config(folder)
    model_type = config.get("model_type")
    if kind == "model":
        if model_type in (NATIVE_MODEL_TYPE, LEGACY_MODEL_TYPE):
            return "native" if model_type == NATIVE_MODEL_TYPE else "legacy"
        raise CheckpointError(
            f"{folder} has model_type {model_type!r}; expected '{NATIVE_MODEL_TYPE}' (Higgs Audio V2, native layout) "
            f"or the legacy release's '{LEGACY_MODEL_TYPE}'"
        )
    if model_type == NATIVE_CODEC_TYPE:
        return "native"
    # The legacy config.json is the keyword arguments of boson_multimodal's HiggsAudioTokenizer; it has no model_type.
    if model_type is None and ({"ratios", "n_q", "bins"} <= config.keys() or (folder / "model.pth").is_file()):
        return "legacy"
    raise CheckpointError(
        f"{folder} is not a Higgs Audio V2 audio tokenizer (model_type {model_type!r}); expected model_type "
        f"'{NATIVE_CODEC_TYPE}' or the legacy folder (config.json + model.pth)"
    )


def check_native(folder: Path, kind: str) -> None:
    """Refuse a legacy or foreign checkpoint, naming the converter for a legacy one."""
    if layout(folder, kind) == "legacy":
        what = (f"Higgs Audio release (model_type '{LEGACY_MODEL_TYPE}')" if kind == "model"
                else "audio tokenizer (model.pth)")
        raise CheckpointError(
            f"{folder} holds the legacy {what}; convert it to the native layout with `{CONVERT_COMMAND}` "
            "or use a native checkpoint"
        )


def probe(settings: Settings) -> str:
    """'healthy' when the checkpoint loads without a download, is in the native layout and the
    device exists; otherwise 'unhealthy: <why>'. Loads nothing."""
    for kind, path, revision in (("model", settings.model_path, settings.model_revision),
                                 ("codec", settings.tokenizer_path, settings.tokenizer_revision)):
        label = "model" if kind == "model" else "tokenizer"
        reason = unavailable_reason(path, revision, settings)
        if reason:
            return f"unhealthy: {label} {reason}"
        try:
            check_native(resolve_path(path, revision, settings), kind)
        except CheckpointError as exc:
            return f"unhealthy: {label}: {exc}"
    try:
        pick_device(settings.device)
    except CheckpointError as exc:
        return f"unhealthy: {exc}"
    return "healthy"


def pick_device(requested: str | None) -> torch.device:
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CheckpointError(f"device {requested!r} requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    if requested:
        names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                 "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
        if requested not in names:
            raise CheckpointError(f"dtype {requested!r} is not one of {sorted(names)}")
        return names[requested]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass
class LoadedModel:
    """The generation model, its processor (text tokenizer, chat template, codec) and where they run."""

    model: object  # HiggsAudioV2ForConditionalGeneration
    processor: object  # HiggsAudioV2Processor
    device: torch.device
    dtype: torch.dtype
    model_path: str
    load_seconds: float

    @property
    def codec(self):
        return self.processor.audio_tokenizer

    @property
    def codec_fingerprint(self) -> str:
        """Identifies the codec (configuration and weights file), for caching its codes."""
        source = self.codec.config.name_or_path
        weights = Path(source) / "model.safetensors"
        stamp = f"{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights.is_file() else ""
        return f"{source}|{stamp}|{self.codec.config.to_json_string(use_diff=False)}"

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def sample_rate(self) -> int:
        return int(self.codec.config.sample_rate)

    @property
    def hop_length(self) -> int:
        return int(self.codec.config.hop_length)


def _build_processor(model_dir: Path, codec):
    """The checkpoint's own processor, but with the codec from TOKENIZER_PATH.

    `HiggsAudioV2Processor.from_pretrained` would load the codec named inside processor_config.json
    (a Hub id for released checkpoints), so the parts are assembled from the same files here.
    """
    from transformers import AutoTokenizer, DacFeatureExtractor, HiggsAudioV2Processor

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config_file = model_dir / "processor_config.json"
    processor_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    feature_config = dict(processor_config.pop("feature_extractor", None) or {})
    feature_config.pop("feature_extractor_type", None)
    feature_extractor = (
        DacFeatureExtractor(**feature_config) if feature_config else DacFeatureExtractor.from_pretrained(model_dir)
    )

    template_file = model_dir / "chat_template.jinja"
    chat_template = (
        template_file.read_text() if template_file.is_file()
        else processor_config.get("chat_template") or tokenizer.chat_template
    )
    if not chat_template:
        raise CheckpointError(f"{model_dir} has no chat template (chat_template.jinja)")

    token_kwargs = {
        key: processor_config[key]
        for key in ("audio_token", "audio_bos_token", "audio_eos_token", "audio_delay_token",
                    "audio_stream_bos_id", "audio_stream_eos_id")
        if key in processor_config
    }
    return HiggsAudioV2Processor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        audio_tokenizer=codec,
        chat_template=chat_template,
        **token_kwargs,
    )


def locate(settings: Settings) -> tuple[Path, Path]:
    """The model and codec folders, checked to be in the native format."""
    model_dir = resolve_path(settings.model_path, settings.model_revision, settings)
    codec_dir = resolve_path(settings.tokenizer_path, settings.tokenizer_revision, settings)
    check_native(model_dir, "model")
    check_native(codec_dir, "codec")
    return model_dir, codec_dir


def _load_codec(codec_dir: Path, device: torch.device):
    from transformers import HiggsAudioV2TokenizerModel

    # The codec stays in float32: it is small, and its decode quality suffers in bf16.
    return HiggsAudioV2TokenizerModel.from_pretrained(codec_dir, dtype=torch.float32).to(device).eval()


def load_processor(settings: Settings):
    """The processor alone (tokenizer, chat template, codec on CPU): enough to render prompts."""
    model_dir, codec_dir = locate(settings)
    return _build_processor(model_dir, _load_codec(codec_dir, torch.device("cpu")))


def check_codec_matches(model_config, codec_config, codec_dir: Path) -> None:
    """The codec must write as many codebooks as the model reads: a config whose default
    bandwidth selects another quantizer count would silently produce wrong codes."""
    quantizers, codebooks = int(codec_config.num_quantizers), int(model_config.num_codebooks)
    if quantizers != codebooks:
        raise CheckpointError(
            f"the audio tokenizer in {codec_dir} encodes with {quantizers} quantizers (target_bandwidths "
            f"{list(codec_config.target_bandwidths)}) but the model reads {codebooks} codebooks; use the codec "
            "released with the model"
        )


def load_model(settings: Settings) -> LoadedModel:
    from transformers import HiggsAudioV2ForConditionalGeneration

    started = time.perf_counter()
    model_dir, codec_dir = locate(settings)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    log.info("loading model from %s on %s (%s)", model_dir, device, dtype)

    model = HiggsAudioV2ForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    codec = _load_codec(codec_dir, device)
    check_codec_matches(model.config, codec.config, codec_dir)
    processor = _build_processor(model_dir, codec)
    return LoadedModel(
        model=model,
        processor=processor,
        device=device,
        dtype=dtype,
        model_path=settings.model_path,
        load_seconds=time.perf_counter() - started,
    )


def _load_key(settings: Settings) -> tuple:
    """What loading reads: settings that differ only in engine knobs share one loaded model."""
    s = settings
    return (s.model_path, s.model_revision, s.tokenizer_path, s.tokenizer_revision, s.device, s.dtype)


class ModelCache:
    """Loads the model once per checkpoint and device, and hands the same instance to every caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[tuple, LoadedModel] = {}

    def get(self, settings: Settings) -> tuple[LoadedModel, bool]:
        """The loaded model and whether this call loaded it."""
        key = _load_key(settings)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key], False
            loaded = load_model(settings)
            self._loaded[key] = loaded
            return loaded, True

    def peek(self, settings: Settings) -> LoadedModel | None:
        """The loaded model if it is loaded; never loads, never waits for a load under way."""
        return self._loaded.get(_load_key(settings))

    def unload(self) -> bool:
        """Drop every loaded model (the next request loads again); True if something was loaded."""
        with self._lock:
            had = bool(self._loaded)
            self._loaded.clear()
            return had
