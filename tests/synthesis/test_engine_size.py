"""The fast engine built by the model holder: slots and queue from ENGINE_SLOTS / ENGINE_QUEUE, or
automatic (on a CPU, CPU_SLOTS), and said in health's words."""

from __future__ import annotations

import dataclasses

import pytest

from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.engine.sizing import CPU_SLOTS, QUEUE_PER_SLOT
from higgs_tts.settings import Settings
from higgs_tts.synthesis.generator import FastGenerator
from higgs_tts.synthesis.models import ModelHolder


@pytest.fixture(scope="module")
def models():
    return ModelCache()


def started(settings, models, **changes) -> ModelHolder:
    holder = ModelHolder(dataclasses.replace(settings, engine="fast", **changes), models)
    holder.prepare()
    assert isinstance(holder._generator, FastGenerator)
    return holder


def test_unset_slots_and_queue_are_automatic(monkeypatch):
    for value in (None, "auto", "AUTO"):
        for name in ("ENGINE_SLOTS", "ENGINE_QUEUE"):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        assert (Settings.from_env().engine_slots, Settings.from_env().engine_queue) == (None, None)
    monkeypatch.setenv("ENGINE_SLOTS", "3")
    monkeypatch.setenv("ENGINE_QUEUE", "5")
    assert (Settings.from_env().engine_slots, Settings.from_env().engine_queue) == (3, 5)
    for bad in ("0", "many"):
        monkeypatch.setenv("ENGINE_SLOTS", bad)
        with pytest.raises(ValueError, match="ENGINE_SLOTS"):
            Settings.from_env()


def test_a_cpu_engine_with_the_defaults_gets_the_cpu_default(settings, models):
    if settings.device != "cpu":
        pytest.skip("the CPU default")
    holder = started(settings, models)
    try:
        scheduler = holder._generator.scheduler
        assert (scheduler.slots, scheduler.max_requests) == (CPU_SLOTS, CPU_SLOTS * (1 + QUEUE_PER_SLOT))
        assert holder.engine_size() == {"slots": CPU_SLOTS, "queue": CPU_SLOTS * QUEUE_PER_SLOT,
                                        "max_len": settings.engine_max_len, "sized_by": "the CPU default"}
    finally:
        holder.unload()


def test_engine_slots_and_queue_override(settings, models):
    holder = started(settings, models, engine_slots=3, engine_max_len=1024)
    try:
        scheduler = holder._generator.scheduler
        assert (scheduler.slots, scheduler.max_requests) == (3, 3 + 3 * QUEUE_PER_SLOT)
        assert holder.engine_size() == {"slots": 3, "queue": 3 * QUEUE_PER_SLOT, "max_len": 1024,
                                        "sized_by": "ENGINE_SLOTS"}
    finally:
        holder.unload()
    holder = started(settings, models, engine_slots=2, engine_queue=5, engine_max_len=1024)
    try:
        assert (holder._generator.scheduler.slots, holder._generator.scheduler.max_requests) == (2, 7)
        assert holder.engine_size()["sized_by"] == "ENGINE_SLOTS; ENGINE_QUEUE"
    finally:
        holder.unload()


def test_no_size_before_the_engine_starts_nor_with_generate(settings, models):
    holder = ModelHolder(dataclasses.replace(settings, engine="generate"), models)
    assert holder.engine_size() is None
    holder.prepare()
    assert holder.engine_size() is None
