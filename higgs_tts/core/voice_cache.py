"""Codec codes of reference clips, cached by content: in memory, and on disk so that a voice is
encoded once per volume rather than once per request or per worker start."""

from __future__ import annotations

import contextlib
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
    """`capacity` entries in memory; on disk at most `max_bytes` of files, the least recently used
    removed first (a read touches its file)."""

    def __init__(self, directory: Path | None = None, capacity: int = 64, max_bytes: int = 512 * 2**20) -> None:
        self.directory = directory
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._codes: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # requests on several threads share the cache

    @staticmethod
    def key(samples: np.ndarray, codec_fingerprint: str) -> str:
        """Same audio and same codec, same key (codes from another codec must not be reused).

        64 hex digits: 32 of the audio alone, then 32 of the audio with the codec, so that every
        codec's codes of one clip can be found (and dropped) from the audio (`forget`)."""
        audio = _audio_digest(samples)
        both = hashlib.sha256(codec_fingerprint.encode())
        both.update(audio.encode())
        return audio[:32] + both.hexdigest()[:32]

    def forget(self, samples: np.ndarray) -> int:
        """Drop the codes of this audio, for every codec, from memory and disk (a deleted voice
        leaves nothing derived from it behind). Returns how many files were removed."""
        prefix = _audio_digest(samples)[:32]
        with self._lock:
            for key in [k for k in self._codes if k.startswith(prefix)]:
                del self._codes[key]
        removed = 0
        if self.directory is not None and (self.directory / prefix[:2]).is_dir():
            for path in (self.directory / prefix[:2]).glob(f"{prefix}*.npy"):
                try:
                    path.unlink()
                    removed += 1
                except OSError as exc:
                    log.warning("cannot remove the cached codes %s: %s", path.name, exc)
        return removed

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
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        self._remember(key, codes)
        return codes

    def put(self, key: str, codes: torch.Tensor) -> None:
        self._remember(key, codes)
        path = self._file(key)
        if path is None:
            return
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, codes.cpu().numpy().astype(np.int16))
            os.chmod(tmp, 0o644)  # readable by every worker sharing the volume, like the voices
            os.replace(tmp, path)  # readers never see a partial file
        except OSError as exc:  # a read-only or full volume costs speed, not the request
            log.warning("cannot write the voice cache under %s: %s", self.directory, exc)
            if tmp is not None:  # a full disk leaves no partial file behind
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return
        self.evict()

    def evict(self) -> int:
        """Remove the least recently used files until the folder holds at most `max_bytes`;
        returns how many were removed."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        files = []
        for path in self.directory.glob("*/*.npy"):
            try:
                stat = path.stat()
            except OSError:  # removed meanwhile (another worker on the volume)
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        removed = 0
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove the cached codes %s: %s", path.name, exc)
                continue
            total -= size
        return removed

    def _remember(self, key: str, codes: torch.Tensor) -> None:
        with self._lock:
            self._codes[key] = codes
            self._codes.move_to_end(key)
            while len(self._codes) > self.capacity:
                self._codes.popitem(last=False)


def _audio_digest(samples: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()
