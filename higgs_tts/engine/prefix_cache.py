"""Prompt prefixes prefilled once: the KV of full 64-token blocks, keyed by their content.

A voice's prompt prefix (system turn, reference transcript and audio) is the same for every
request that uses the voice; only the text after it differs. Each full block of a prompt is keyed
by a hash chained over every token id and audio code up to its end, so a block is reused exactly
when everything before it is the same: a cached voice prefills only its own text (at most one
partial block of the prefix more), and an edited voice (other codes or transcript) is a new key.

    blocks = prompt_blocks(ids, codes, is_audio)    the chain of keys of a prompt's full blocks
    hit, kv = cache.lookup(blocks, limit)           the longest cached run of them
    cache.store(blocks, kv)                         its blocks, least recently used evicted

Bounded by bytes, least recently used first; shared by every scheduler of a model and safe to
use from any thread.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict

import torch

BLOCK = 64  # tokens per cached block


def prompt_blocks(ids: torch.Tensor, codes: torch.Tensor, is_audio: torch.Tensor) -> list[bytes]:
    """The chained key of each full block of a prompt (on the host): its token ids `[S]`, and the
    audio codes `[A, K]` of the block's audio positions (`is_audio` `[S]`)."""
    before = torch.cumsum(is_audio, 0) - is_audio.long()  # audio positions before each token
    keys, chain = [], b""
    for start in range(0, ids.shape[0] - BLOCK + 1, BLOCK):
        first, count = int(before[start]), int(is_audio[start:start + BLOCK].sum())
        digest = hashlib.blake2b(chain, digest_size=16)
        digest.update(ids[start:start + BLOCK].numpy().tobytes())
        digest.update(codes[first:first + count].numpy().tobytes())
        chain = digest.digest()
        keys.append(chain)
    return keys


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0  # blocks found and not found, for health and tests
        # key -> (KV per layer, bytes, the event that marks its copy done on a GPU)
        self._blocks: OrderedDict[bytes, tuple[list[torch.Tensor], int, torch.cuda.Event | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, blocks: list[bytes], limit: int) -> tuple[int, list[torch.Tensor]]:
        """The longest run of `blocks` (at most `limit`) that is cached: (its tokens, the keys and
        values per layer `[tokens, 2, Hkv, D]`)."""
        found = []
        with self._lock:
            for key in blocks[:limit]:
                entry = self._blocks.get(key)
                if entry is None:
                    break
                found.append(entry)
            self._touch(blocks[:len(found)])
            self.hits += len(found)
            self.misses += min(len(blocks), limit) - len(found)
        if not found:
            return 0, []
        for kv, _, copied in found:  # a block copied on another thread's stream is read after its copy
            if copied is not None:
                stream = torch.cuda.current_stream(copied.device)
                stream.wait_event(copied)
                for tensor in kv:  # and, evicted meanwhile, its memory is not reused before this stream read it
                    tensor.record_stream(stream)
        layers = len(found[0][0])
        return len(found) * BLOCK, [torch.cat([f[0][i] for f in found]) for i in range(layers)]

    def store(self, blocks: list[bytes], layers: list[torch.Tensor]) -> None:
        """Keep every block of a prefilled prompt (its keys and values per layer `[S, 2, Hkv, D]`)."""
        with self._lock:
            missing = [i for i, key in enumerate(blocks) if key not in self._blocks]
        new = {}
        for index in missing:
            kv = [layer[index * BLOCK:(index + 1) * BLOCK].clone() for layer in layers]
            new[blocks[index]] = (kv, sum(t.numel() * t.element_size() for t in kv), None)
        if new and layers[0].device.type == "cuda":
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(layers[0].device))
            new = {key: (kv, size, copied) for key, (kv, size, _) in new.items()}
        with self._lock:
            for key, entry in new.items():
                if key not in self._blocks:
                    self._blocks[key] = entry
                    self.bytes += entry[1]
            self._touch(blocks)
            while self.bytes > self.max_bytes and self._blocks:  # least recently used first
                _, (_, freed, _) = self._blocks.popitem(last=False)
                self.bytes -= freed

    def _touch(self, blocks: list[bytes]) -> None:
        """Mark a chain used, its head last: eviction takes chains from their tails, and a shorter
        cached prefix still serves."""
        for key in reversed(blocks):
            if key in self._blocks:
                self._blocks.move_to_end(key)


_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its prefix cache


def prefix_cache_for(model, max_bytes: int) -> PrefixCache | None:
    """The one prefix cache of `model` (None when `max_bytes` is 0): every scheduler and engine of
    the model shares it, so a voice prefilled by one is cached for all."""
    if max_bytes <= 0:
        return None
    cache = _SHARED.get(model)
    if cache is None:
        cache = _SHARED[model] = PrefixCache(max_bytes)
    cache.max_bytes = max(cache.max_bytes, max_bytes)
    return cache
