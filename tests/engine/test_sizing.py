"""Slots from memory: the one rule with numbers, and a slot's bytes against the cache it allocates."""

from __future__ import annotations

import pytest
import torch

from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.engine.model_runner import ModelRunner
from higgs_tts.engine.sizing import (
    CPU_SLOTS,
    HEADROOM_MIN_BYTES,
    MAX_SLOTS,
    QUEUE_PER_SLOT,
    EngineSize,
    engine_size,
    fit_slots,
    headroom,
    slot_bytes,
)

GIB = 2**30
# The real model's slot at ENGINE_MAX_LEN 4096 in bf16: 28 layers x 4096 x 2 x 8 kv heads x 128 x 2 bytes.
REAL_SLOT = 28 * 4096 * 2 * 8 * 128 * 2


def test_slots_are_what_fits_after_the_prefix_cache_and_the_headroom():
    # An 80 GiB card with 68 GiB free once the model is loaded: 68 - 1 (prefix cache) - 8 (headroom)
    # = 59 GiB, 134 slots of 448 MiB: more than the most.
    assert 59 * GIB // REAL_SLOT == 134 and fit_slots(68 * GIB, REAL_SLOT, 1 * GIB, 8 * GIB) == MAX_SLOTS == 64
    assert fit_slots(20 * GIB, REAL_SLOT, 1 * GIB, 4 * GIB) == 15 * GIB // REAL_SLOT == 34
    assert fit_slots(20 * GIB, REAL_SLOT, 0, 4 * GIB) == 36  # the prefix cache's budget did count
    assert fit_slots(3 * GIB, REAL_SLOT, 0, 0) == 6


def test_slots_are_clamped_to_one_and_to_the_most():
    assert fit_slots(10**15, REAL_SLOT) == MAX_SLOTS
    assert fit_slots(2 * GIB, REAL_SLOT, 1 * GIB, 4 * GIB) == 1  # nothing fits: one slot all the same
    assert fit_slots(0, 1) == 1
    with pytest.raises(ValueError):
        fit_slots(GIB, 0)


def test_headroom_is_a_share_of_the_card_with_a_floor():
    assert headroom(80 * GIB) == 8 * GIB
    assert headroom(16 * GIB) == HEADROOM_MIN_BYTES


@pytest.fixture(scope="module")
def model(settings):
    return ModelCache().get(settings)[0].model


def test_a_slot_costs_its_kv_cache_and_a_little_more(model):
    runner = ModelRunner(model, 512)
    cache = runner.allocate_cache(1)
    kv = sum(layer.numel() * layer.element_size() for layer in cache.layers)
    assert kv == 2 * 512 * 2 * 2 * 8 * 4  # tiny: 2 layers x 512 positions x k|v x 2 heads x 8 dims x float32
    assert kv < slot_bytes(model, 512) <= kv + 2**20
    assert slot_bytes(model, 1024) - slot_bytes(model, 512) >= kv  # the cache grows with the positions


def test_the_settings_win_and_the_queue_follows_the_slots(model):
    assert engine_size(model, 3, 512, None, 0) == EngineSize(3, 3 * QUEUE_PER_SLOT, "ENGINE_SLOTS")
    assert engine_size(model, 3, 512, 5, 0) == EngineSize(3, 5, "ENGINE_SLOTS; ENGINE_QUEUE")
    if model.device.type == "cpu":
        assert engine_size(model, None, 512, None, GIB) == EngineSize(CPU_SLOTS, CPU_SLOTS * QUEUE_PER_SLOT,
                                                                      "the CPU default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="sizing from free memory needs a GPU")
def test_on_cuda_the_slots_come_from_free_memory(settings):
    import dataclasses

    loaded = ModelCache().get(dataclasses.replace(settings, device="cuda"))[0]
    size = engine_size(loaded.model, None, 4096, None, GIB)
    assert 1 <= size.slots <= MAX_SLOTS and size.queue == size.slots * QUEUE_PER_SLOT
    assert size.sized_by.startswith("free memory")
