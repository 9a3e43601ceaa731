"""Codec codes of reference clips, cached by content: in memory, and on disk so that a voice is
encoded once per volume rather than once per request or per worker start."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


class VoiceCodeCache:
    def __init__(self, directory: Path | None = None, capacity: int = 64) -> None:
        self.directory = directory
        self.capacity = capacity
        self._codes: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # requests on several threads share the cache

    @staticmethod
    def key(samples: np.ndarray, codec_fingerprint: str) -> str:
        """Same audio and same codec, same key (codes from another codec must not be reused)."""
        digest = hashlib.sha256(codec_fingerprint.encode())
        digest.update(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def _file(self, key: str) -> Path | None:
        return self.directory / key[:2] / f"{key}.npy" if self.directory else None

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            if key in self._codes:
                self._codes.move_to_end(key)
                return self._codes[key]
        path = self._file(key)
        if path is None or not path.is_file():
            return None
        try:
            codes = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.int64))
        except (OSError, ValueError) as exc:  # a torn or foreign file: encode again
            log.warning("ignoring unreadable voice cache file %s: %s", path.name, exc)
            return None
        self._remember(key, codes)
        return codes

    def put(self, key: str, codes: torch.Tensor) -> None:
        self._remember(key, codes)
        path = self._file(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, codes.cpu().numpy().astype(np.int16))
            os.chmod(tmp, 0o644)  # readable by every worker sharing the volume, like the voices
            os.replace(tmp, path)  # readers never see a partial file
        except OSError as exc:  # a read-only or full volume costs speed, not the request
            log.warning("cannot write the voice cache under %s: %s", self.directory, exc)

    def _remember(self, key: str, codes: torch.Tensor) -> None:
        with self._lock:
            self._codes[key] = codes
            self._codes.move_to_end(key)
            while len(self._codes) > self.capacity:
                self._codes.popitem(last=False)
