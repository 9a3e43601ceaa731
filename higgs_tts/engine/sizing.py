"""How many sequences the engine decodes at once (slots) and how many requests may wait (queue):
from the device's free memory, unless ENGINE_SLOTS / ENGINE_QUEUE say.

    fit_slots(free, per_slot, reserved, headroom) -> slots   the one rule, pure (tested with numbers)
    slot_bytes(model, max_len)                              one slot: its KV cache and its step buffers
    engine_size(model, slots, max_len, queue, prefix_cache_bytes) -> EngineSize

On CUDA the KV cache of every slot is allocated once, up front, after the model and codec are
loaded: the slots are what fits in the memory free then, less the prefix cache's budget (it fills
later) and a headroom for what is allocated per request (prefills, codec decodes, the allocator's
slack). On a CPU there is no separate pool to measure and the step is compute-bound: rows beyond
a few make every stream slower without adding throughput, so the CPU default is a fixed CPU_SLOTS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_SLOTS = 64  # at most, however much memory is free: each row adds its KV reads to every step
CPU_SLOTS = 8
QUEUE_PER_SLOT = 4  # requests admitted to wait, per slot, when ENGINE_QUEUE is not set
# Kept free on a GPU: a prefill's activations (up to ENGINE_MAX_LEN tokens), codec decodes (float32,
# about 0.7 MB per frame on the real codec: a whole request's decode, or batched stream pieces),
# a prompt too long for the shared cache (a cache of its own), cuBLAS workspaces, fragmentation.
HEADROOM_FRACTION = 0.10  # of the device's memory
HEADROOM_MIN_BYTES = 4 * 2**30
# The step's buffers per row, static and transient, as multiples of one row's logits [K, V]
# (float32 logits, the sampler's sort values and int64 indices, noise, probabilities): generous.
SAMPLER_LOGITS_COPIES = 16

GIB = 2**30


@dataclass(frozen=True)
class EngineSize:
    slots: int
    queue: int  # requests admitted beyond the slots
    sized_by: str  # why these numbers, in words (health, the start-up log)


def fit_slots(free_bytes: int, per_slot_bytes: int, reserved_bytes: int = 0, headroom_bytes: int = 0) -> int:
    """Slots whose memory fits in `free_bytes` once `reserved_bytes` (the prefix cache's budget) and
    `headroom_bytes` are set aside: at least 1 (a worker that decodes nothing serves nobody; a
    device too small then fails loudly at allocation), at most MAX_SLOTS."""
    if per_slot_bytes <= 0:
        raise ValueError(f"a slot costs a positive number of bytes; got {per_slot_bytes}")
    usable = free_bytes - reserved_bytes - headroom_bytes
    return max(1, min(MAX_SLOTS, usable // per_slot_bytes))


def headroom(total_bytes: int) -> int:
    return max(int(total_bytes * HEADROOM_FRACTION), HEADROOM_MIN_BYTES)


def slot_bytes(model, max_len: int) -> int:
    """One slot's memory: its KV cache (layers x max_len x 2 x Hkv x D, engine/kv_cache.py) plus the
    decode step's buffers for one row (its logits and the sampler's copies of them, the attention
    scores over max_len positions, the layer's activations)."""
    config = model.config
    size = next(model.parameters()).dtype.itemsize
    layers = len(model.model.layers)
    kv = layers * max_len * 2 * config.num_key_value_heads * config.head_dim * size
    logits = config.num_codebooks * config.codebook_size * 4 * SAMPLER_LOGITS_COPIES
    scores = config.num_attention_heads * max_len * 4
    activations = (3 * config.num_attention_heads * config.head_dim + 2 * config.intermediate_size
                   + 4 * config.hidden_size) * size
    return kv + logits + scores + activations


def free_device_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes on a CUDA device; memory torch holds cached but unused counts as free."""
    free, total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device), total


def engine_size(model, slots: int | None, max_len: int, queue: int | None, prefix_cache_bytes: int) -> EngineSize:
    """The slots and queue: the settings' where given (None: automatic), else from memory (CUDA)
    or CPU_SLOTS; the queue QUEUE_PER_SLOT per slot unless given."""
    if slots is not None:
        why = "ENGINE_SLOTS"
    elif model.device.type == "cuda":
        free, total = free_device_memory(model.device)
        per_slot, kept = slot_bytes(model, max_len), headroom(total)
        slots = fit_slots(free, per_slot, prefix_cache_bytes, kept)
        why = (f"free memory: {free / GIB:.1f} GiB free, less {prefix_cache_bytes / GIB:.1f} GiB prefix cache "
               f"and {kept / GIB:.1f} GiB headroom, {per_slot / 2**20:.0f} MiB a slot of {max_len} positions "
               f"(at most {MAX_SLOTS})")
    else:
        slots, why = CPU_SLOTS, "the CPU default"
    if queue is None:
        queue = QUEUE_PER_SLOT * slots
    else:
        why += "; ENGINE_QUEUE"
    return EngineSize(slots, queue, why)
