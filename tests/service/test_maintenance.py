from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.service.maintenance import IdleCleaner
from higgs_tts.synthesis.synthesizer import Synthesizer


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_cleans_once_after_idle_and_not_during_jobs(settings):
    synthesizer = Synthesizer(settings, ModelCache())
    clock = Clock()
    cleaner = IdleCleaner(synthesizer, idle_seconds=300, unload=False, clock=clock)
    assert cleaner.check() is None  # nothing ran yet
    cleaner.job_started()
    clock.now += 1000
    assert cleaner.check() is None  # a job is running
    cleaner.job_finished()
    clock.now += 299
    assert cleaner.check() is None
    clock.now += 2
    assert cleaner.check() == "freed cached memory"
    assert cleaner.check() is None  # once per idle period


def test_unload_after_idle_frees_the_model(settings):
    synthesizer = Synthesizer(settings, ModelCache())
    synthesizer.model()
    clock = Clock()
    cleaner = IdleCleaner(synthesizer, idle_seconds=10, unload=True, clock=clock)
    cleaner.job_started()
    cleaner.job_finished()
    clock.now += 11
    assert cleaner.check() == "unloaded the model and freed memory"
    assert synthesizer.loaded_model() is None
    _, loaded_now = synthesizer.model()
    assert loaded_now
