import dataclasses

import numpy as np
import torch

from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.core.voice_cache import VoiceCodeCache
from higgs_tts.synthesis.synthesizer import Synthesizer


def test_codes_survive_a_new_cache_instance(tmp_path):
    codes = torch.randint(0, 1024, (50, 8))
    key = VoiceCodeCache.key(np.ones(100, dtype=np.float32), "codec-a")
    VoiceCodeCache(tmp_path).put(key, codes)
    assert torch.equal(VoiceCodeCache(tmp_path).get(key), codes)
    assert VoiceCodeCache(None).get(key) is None
    (stored,) = tmp_path.rglob("*.npy")
    assert stored.stat().st_mode & 0o777 == 0o644  # other workers on the volume read it too


def test_key_depends_on_audio_and_codec():
    audio = np.zeros(100, dtype=np.float32)
    assert VoiceCodeCache.key(audio, "a") != VoiceCodeCache.key(audio, "b")
    assert VoiceCodeCache.key(audio, "a") != VoiceCodeCache.key(audio + 0.1, "a")


def test_unreadable_file_is_ignored(tmp_path):
    cache = VoiceCodeCache(tmp_path)
    key = "ab" + "0" * 62
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / f"{key}.npy").write_bytes(b"torn")
    assert cache.get(key) is None


def test_file_in_place_of_the_folder_costs_speed_not_the_request(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    cache = VoiceCodeCache(blocker)
    cache.put("cd" + "1" * 62, torch.zeros(3, 8, dtype=torch.long))  # logs a warning, keeps going
    assert cache.get("cd" + "1" * 62) is not None


def test_a_voice_is_encoded_once_per_volume(settings, tmp_path):
    local = dataclasses.replace(settings, voice_cache_dir=tmp_path / "codes")
    models = ModelCache()
    first = Synthesizer(local, models)
    audio = first.voices.get("belinda").load_audio()
    codes = first.encode_reference(audio)
    files = list((tmp_path / "codes").rglob("*.npy"))
    assert len(files) == 1

    second = Synthesizer(local, models)  # a new worker on the same volume

    def no_encoding(*args, **kwargs):
        raise AssertionError("the codec encoded a voice that was cached on disk")

    loaded, _ = second.model()
    original = loaded.codec.encode
    loaded.codec.encode = no_encoding
    try:
        assert torch.equal(second.encode_reference(audio), codes)
    finally:
        loaded.codec.encode = original


def test_forget_drops_the_audio_codes_for_every_codec(tmp_path):
    audio, other = np.ones(100, dtype=np.float32), np.zeros(100, dtype=np.float32)
    cache = VoiceCodeCache(tmp_path)
    for codec in ("codec-a", "codec-b"):
        cache.put(VoiceCodeCache.key(audio, codec), torch.ones(3, 8, dtype=torch.long))
    cache.put(VoiceCodeCache.key(other, "codec-a"), torch.zeros(3, 8, dtype=torch.long))
    assert cache.forget(audio) == 2
    assert cache.get(VoiceCodeCache.key(audio, "codec-a")) is None
    assert cache.get(VoiceCodeCache.key(audio, "codec-b")) is None
    assert VoiceCodeCache(tmp_path).get(VoiceCodeCache.key(other, "codec-a")) is not None  # others stay
    assert len(list(tmp_path.rglob("*.npy"))) == 1


def test_the_disk_cache_is_evicted_by_size_least_recently_used_first(tmp_path):
    import os
    import stat

    codes = torch.arange(800).reshape(100, 8)
    VoiceCodeCache(tmp_path / "probe").put("aa" + "0" * 62, codes)
    size = next((tmp_path / "probe").glob("*/*.npy")).stat().st_size
    folder = tmp_path / "cache"
    cache = VoiceCodeCache(folder, capacity=1, max_bytes=3 * size)  # room for three files
    keys = [f"{i:02d}" + "0" * 62 for i in range(4)]
    for age, key in enumerate(keys[:3]):
        cache.put(key, codes)
        os.utime(cache._file(key), (1000 + age, 1000 + age))
    assert VoiceCodeCache(folder).get(keys[0]) is not None  # a read: keys[0] is now the most recent
    cache.put(keys[3], codes)  # a fourth file: the least recently used one goes
    assert {p.stem for p in folder.glob("*/*.npy")} == {keys[0], keys[2], keys[3]}
    # readable by every worker sharing the volume
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in folder.glob("*/*.npy"))


def test_a_full_disk_costs_speed_and_leaves_no_partial_file(tmp_path):
    from conftest import full_disk

    codes = torch.randint(0, 1024, (5000, 8))
    key = VoiceCodeCache.key(np.ones(100, dtype=np.float32), "codec-a")
    with full_disk(tmp_path / "cache") as folder:
        cache = VoiceCodeCache(folder)
        cache.put(key, codes)  # the write fails with ENOSPC: logged, not raised
        assert torch.equal(cache.get(key), codes)  # still served from memory
        assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == ["filler"]
