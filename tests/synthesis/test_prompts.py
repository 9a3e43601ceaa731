"""Reference clips encoded by VoicePrompts (higgs_tts/synthesis/prompts.py) on the tiny checkpoint."""

import concurrent.futures
import threading

import numpy as np
import torch

from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.core.encoding import encode_clip
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
