import os
import shutil

import numpy as np
import pytest

from higgs_tts.core.audio import SAMPLE_RATE
from higgs_tts.core.voices import CATALOG, VoiceError, VoiceLibrary, validate_name


@pytest.fixture
def library(tmp_path, voice_prompts):
    root = tmp_path / "voices"
    shutil.copytree(voice_prompts, root)
    return VoiceLibrary(root)


def test_clone_voice_has_audio_and_transcript(library):
    voice = library.get("belinda")
    assert voice.kind == "clone"
    assert voice.description == "Female voice with warm tone"
    assert voice.transcript.startswith("Twas the night before my birthday.")
    audio = voice.load_audio()
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.0 < len(audio) / SAMPLE_RATE < 30.0


def test_stereo_44k_reference_becomes_24k_mono(library, voice_prompts):
    import soundfile as sf

    info = sf.info(voice_prompts / "broom_salesman.wav")
    assert info.channels == 2 and info.samplerate == 44100
    audio = library.get("broom_salesman").load_audio()
    assert audio.ndim == 1
    assert abs(len(audio) / SAMPLE_RATE - info.duration) < 0.01


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_all_documented_voices_exist(library, name):
    voice = library.get(name)
    assert voice.description == CATALOG[name]


def test_catalog_voice_without_audio_is_described(library):
    assert library.get("daffy").kind == "described"
    assert library.get("daffy").audio_path is None


def test_catalog_voice_with_audio_added_clones_it(library, voice_prompts):
    shutil.copy(voice_prompts / "en_man.wav", library.root / "jorts.wav")
    (library.root / "jorts.txt").write_text("Some words.")
    voice = library.get("jorts")
    assert voice.kind == "clone" and voice.description == "Male voice with casual tone"


def test_profile_entries_are_described_voices(library):
    voice = library.get("male_en")
    assert voice.kind == "described"
    assert voice.description.startswith("Male, American accent")
    assert library.get("profile:female_en_story").kind == "described"


def test_audio_without_transcript_is_not_a_clone(library):
    (library.root / "belinda.txt").unlink()
    assert library.get("belinda").kind == "described"


def test_several_voices_in_order(library):
    assert [v.name for v in library.resolve("belinda, chadwick")] == ["belinda", "chadwick"]
    assert library.resolve(None) == []


def test_listing_has_kinds_and_descriptions(library):
    listed = {v.name: v for v in library.list()}
    assert {"belinda", "chadwick", "daffy", "elsa", "jorts", "male_en", "zh_man_sichuan"} <= set(listed)
    assert listed["chadwick"].kind == "clone" and listed["elsa"].kind == "described"
    assert all(s["description"] for s in library.suggestions())


def test_unknown_voice_lists_suggestions(library):
    with pytest.raises(VoiceError, match="unknown voice 'nobody'") as err:
        library.get("nobody")
    assert {"name": "belinda", "description": "Female voice with warm tone"} in err.value.suggestions


@pytest.mark.parametrize(
    "name", ["../belinda", "a/b", "..", "", "x" * 65, "bel inda", "belinda.wav", "/etc/passwd", "名字", None,
             "belinda\n"]
)
def test_invalid_names_are_rejected(library, name):
    with pytest.raises(VoiceError, match="invalid voice name"):
        library.get(name)


def test_name_limit_is_64_characters():
    assert validate_name("a" * 64) == "a" * 64


def test_symlink_out_of_the_folder_is_not_followed(library, tmp_path, voice_prompts):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(voice_prompts / "en_man.wav", outside / "secret.wav")
    (outside / "secret.txt").write_text("private transcript")
    os.symlink(outside / "secret.wav", library.root / "leak.wav")
    os.symlink(outside / "secret.txt", library.root / "leak.txt")
    with pytest.raises(VoiceError, match="unknown voice"):
        library.get("leak")
    assert "leak" not in {v.name for v in library.list()}


def test_symlinked_voices_folder_itself_works(tmp_path, voice_prompts):
    link = tmp_path / "linked"
    os.symlink(voice_prompts, link)
    assert VoiceLibrary(link).get("belinda").kind == "clone"


def test_missing_folder_still_has_the_catalog(tmp_path):
    library = VoiceLibrary(tmp_path / "absent")
    assert {v.name for v in library.list()} == set(CATALOG)
    assert library.get("belinda").kind == "described"


def test_added_voices_are_readable_by_everyone_sharing_the_volume(tmp_path):
    import stat

    from higgs_tts.core.voices import VoiceExists

    library = VoiceLibrary(tmp_path / "voices")
    audio = (0.1 * np.sin(np.arange(24000) / 10)).astype(np.float32)
    voice = library.add("fresh", audio, "A fresh voice.")
    assert voice.kind == "clone" and voice.transcript == "A fresh voice."
    for suffix in (".wav", ".txt"):
        mode = stat.S_IMODE((tmp_path / "voices" / f"fresh{suffix}").stat().st_mode)
        assert mode == 0o644, oct(mode)
    with pytest.raises(VoiceExists):
        library.add("fresh", audio, "Again.")
    assert library.add("fresh", audio, "Replaced.", overwrite=True).transcript == "Replaced."
    assert not [p for p in (tmp_path / "voices").iterdir() if p.name.startswith(".tmp-")]


def test_a_full_disk_keeps_the_old_voice_whole(tmp_path, voice_prompts):
    # a real small filesystem, full: every write fails with ENOSPC, as Python's OSError
    import errno

    from conftest import full_disk

    keep = [voice_prompts / "chadwick.wav", voice_prompts / "chadwick.txt"]
    with full_disk(tmp_path / "voices", keep) as root:
        library = VoiceLibrary(root)
        (root / ".voices.lock").touch()
        before = {p.name: p.read_bytes() for p in root.iterdir()}
        audio = np.zeros(24000, dtype=np.float32)
        with pytest.raises(OSError) as full:
            library.add("chadwick", audio, "A new transcript.", overwrite=True)
        assert full.value.errno == errno.ENOSPC
        with pytest.raises(OSError):
            library.add("newcomer", audio, "Never stored.")
        assert {p.name: p.read_bytes() for p in root.iterdir()} == before  # nothing half-written is left
        assert library.get("chadwick").transcript == (voice_prompts / "chadwick.txt").read_text().strip()


def test_of_concurrent_creations_of_one_name_exactly_one_wins(tmp_path):
    import threading

    from higgs_tts.core.voices import VoiceExists

    library = VoiceLibrary(tmp_path / "voices")
    outcomes: list[str] = []
    start = threading.Barrier(20)

    def create(i: int) -> None:
        audio = np.full(24000, i / 100, dtype=np.float32)
        start.wait()
        try:
            library.add("racer", audio, f"Take {i}.")
            outcomes.append(f"won {i}")
        except VoiceExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("exists") == 19
    i = int(winners[0].split()[1])
    voice = library.get("racer")
    assert voice.transcript == f"Take {i}."  # the transcript and the audio of the same call
    assert abs(float(voice.load_audio()[100]) - i / 100) < 1e-3


def test_delete_removes_every_file_and_the_voice(library):
    audio = (0.1 * np.sin(np.arange(24000) / 10)).astype(np.float32)
    library.add("guest", audio, "A guest.", description="A guest voice,\n  warm")
    assert library.get("guest").description == "A guest voice, warm"
    voice, removed = library.delete("guest")
    assert voice.name == "guest" and removed is not None and len(removed) == len(audio)
    assert not [p for p in library.root.iterdir() if p.name.startswith("guest")]
    with pytest.raises(VoiceError, match="unknown voice 'guest'"):
        library.get("guest")
    with pytest.raises(VoiceError, match="no stored voice named 'guest'"):
        library.delete("guest")


def test_deleting_a_catalog_voice_leaves_it_described(library):
    library.delete("belinda")
    assert library.get("belinda").kind == "described"
    with pytest.raises(VoiceError, match="described voice"):
        library.delete("belinda")
    with pytest.raises(VoiceError, match="invalid voice name"):
        library.delete("../belinda")


def test_overwriting_without_a_description_drops_the_old_one(library):
    audio = np.zeros(24000, dtype=np.float32)
    library.add("guest", audio, "A guest.", description="First take")
    assert library.add("guest", audio, "Again.", overwrite=True).description == "Voice cloned from guest.wav"


def test_concurrent_adds_and_deletes_leave_whole_voices_or_none(tmp_path):
    import threading

    from higgs_tts.core.voices import VoiceExists

    library = VoiceLibrary(tmp_path / "voices")
    start = threading.Barrier(16)

    def work(i: int) -> None:
        start.wait()
        for _ in range(5):
            try:
                if i % 2:
                    library.add("churn", np.full(2400, i / 100, dtype=np.float32), f"Take {i}.", overwrite=True)
                else:
                    library.delete("churn")
            except (VoiceExists, VoiceError):
                pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = sorted(p.name for p in (tmp_path / "voices").iterdir() if not p.name.startswith(".voices"))
    assert names in ([], ["churn.txt", "churn.wav"]), names
    if names:
        voice = library.get("churn")
        i = int(voice.transcript.split()[1].rstrip("."))
        assert abs(float(voice.load_audio()[100]) - i / 100) < 1e-3
