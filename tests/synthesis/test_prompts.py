"""Reference clips encoded by VoicePrompts (higgs_tts/synthesis/prompts.py) on the tiny checkpoint."""

import concurrent.futures
import threading

import numpy as np
import pytest
import torch

from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.core.encoding import ENCODING, encode_clip
from higgs_tts.synthesis.synthesizer import Synthesizer


def test_concurrent_references_are_encoded_one_at_a_time_on_one_thread(settings, tmp_path):
    """Each encode is the memory peak: one at a time, and on one thread, so that each reuses the memory the
    last one freed (glibc keeps a heap per thread); each caller still gets its own clip's codes."""
    import dataclasses

    synthesizer = Synthesizer(dataclasses.replace(settings, voice_cache_dir=tmp_path), ModelCache())
    codec = synthesizer.model()[0].codec
    threads, running, most = set(), [0], [0]
    lock = threading.Lock()

    def enter(module, args):
        with lock:
            threads.add(threading.current_thread().name)
            running[0] += 1
            most[0] = max(most[0], running[0])

    def leave(module, args, out):
        with lock:
            running[0] -= 1

    clips = [np.sin(np.arange(24000 + 960 * i) / (5.0 + i)).astype(np.float32) * 0.3 for i in range(4)]
    hooks = [codec.acoustic_encoder.register_forward_pre_hook(enter),
             codec.acoustic_encoder.register_forward_hook(leave)]
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            frames = list(pool.map(synthesizer.encode_reference, clips))
    finally:
        for hook in hooks:
            hook.remove()
    assert most[0] == 1 and len(threads) == 1 and threading.current_thread().name not in threads
    assert [f.shape[0] for f in frames] == [25 + i for i in range(4)]
    with torch.no_grad():
        for got, clip in zip(frames, clips, strict=True):
            assert torch.equal(got, encode_clip(codec, torch.from_numpy(clip)[None, None])[0].T)


def test_a_request_stopped_while_its_encode_waits_leaves_at_once(settings, tmp_path):
    """A request whose client went away (or a stopping server) does not wait for the encodes queued ahead
    of it: Cancelled within a poll, and its own encode, still queued, never runs."""
    import dataclasses
    import time

    from higgs_tts.core.voice_cache import VoiceCodeCache
    from higgs_tts.synthesis.prompts import STOP_POLL_SECONDS
    from higgs_tts.synthesis.request import Cancelled

    synthesizer = Synthesizer(dataclasses.replace(settings, voice_cache_dir=tmp_path), ModelCache())
    prompts, loaded = synthesizer.prompts, synthesizer.model()[0]
    busy, release = threading.Event(), threading.Event()
    ahead = prompts._encoder.submit(lambda: busy.set() or release.wait(60))  # an encode under way, ahead of it
    assert busy.wait(60)
    clip = np.sin(np.arange(48000) / 9.0).astype(np.float32) * 0.3
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(prompts.encode, clip, stop)
        time.sleep(3 * STOP_POLL_SECONDS)
        assert not waiting.done()
        stopped = time.perf_counter()
        stop.set()
        with pytest.raises(Cancelled):
            waiting.result(60)
        assert time.perf_counter() - stopped < 10 * STOP_POLL_SECONDS
    release.set()
    ahead.result(60)
    prompts._encoder.submit(lambda: None).result(60)  # everything queued has had its turn
    key = VoiceCodeCache.key(clip, f"{loaded.codec_fingerprint}:{ENCODING}")
    assert prompts._cache.get(key) is None  # the cancelled encode never ran
    assert prompts.encode(clip, threading.Event()).shape == (50, loaded.model.config.num_codebooks)
