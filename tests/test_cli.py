"""The `higgs-tts` command as the README shows it, run as a real process."""

import os
import shutil
import subprocess
import sys

import pytest
import soundfile as sf

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools


@pytest.fixture(scope="module")
def env(tiny_checkpoint, voice_prompts):
    model_dir, codec_dir = tiny_checkpoint
    return {
        **os.environ,
        "MODEL_PATH": str(model_dir),
        "TOKENIZER_PATH": str(codec_dir),
        "VOICE_PROMPTS_PATH": str(voice_prompts),
    }


def higgs_tts(*args, env):
    exe = shutil.which("higgs-tts", path=os.path.dirname(sys.executable)) or shutil.which("higgs-tts")
    assert exe, "the higgs-tts console script is not installed"
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=300)


def test_speak_writes_a_24k_wav(env, tmp_path):
    out = tmp_path / "hello.wav"
    done = higgs_tts("speak", "--text", "Hello from the command line.", "--voice", "belinda",
                     "--seed", "42", "--max-new-tokens", "50", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    info = sf.info(out)
    assert info.samplerate == 24000 and info.channels == 1
    assert info.frames > 0 and info.frames % 960 == 0
    assert "seed 42" in done.stderr


def test_engines_give_the_same_greedy_audio(env, tmp_path):
    outputs = {}
    for engine in ("fast", "reference"):
        out = tmp_path / f"{engine}.wav"
        done = higgs_tts("speak", "--text", "Same either way.", "--voice", "chadwick", "--temperature", "0",
                         "--ras-win-len", "0", "--max-new-tokens", "40", "--engine", engine, "--out", str(out),
                         env=env)
        assert done.returncode == 0, done.stderr
        outputs[engine] = out.read_bytes()
    assert outputs["fast"] == outputs["reference"]


def test_speak_from_a_text_file_with_scene_and_chunks(env, tmp_path):
    text_file = tmp_path / "story.txt"
    text_file.write_text("One short line. Another short line. A third line.")
    out = tmp_path / "story.wav"
    done = higgs_tts("speak", "--text-file", str(text_file), "--scene", "A windy beach.",
                     "--chunk-method", "sentence", "--chunk-max-word-num", "3",
                     "--max-new-tokens", "30", "--temperature", "0.7", "--top-k", "20", "--top-p", "0.9",
                     "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert "3 chunk(s)" in done.stderr
    assert sf.info(out).frames % 960 == 0


def test_print_prompt_prints_only_the_prompt(env):
    done = higgs_tts("speak", "--text", "Hi (there)", "--voice", "elsa", "--scene", "", "--print-prompt", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Generate audio following instruction.\n\n<|scene_desc_start|>\n"
        "SPEAKER0: Female voice with clear articulation\n<|scene_desc_end|><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>\n"
    )


def test_voices_lists_kind_and_description(env):
    done = higgs_tts("voices", env=env)
    assert done.returncode == 0, done.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in done.stdout.splitlines()}
    assert rows["belinda"] == ["belinda", "clone", "Female voice with warm tone"]
    assert rows["jorts"] == ["jorts", "described", "Male voice with casual tone"]


def test_errors_are_one_line_without_traceback(env, tmp_path):
    done = higgs_tts("speak", "--text", "Hi.", "--voice", "../etc", "--out", str(tmp_path / "x.wav"), env=env)
    assert done.returncode == 2
    assert "invalid voice name" in done.stderr and "Traceback" not in done.stderr
    bad_model = {**env, "MODEL_PATH": str(tmp_path / "missing")}
    done = higgs_tts("speak", "--text", "Hi.", "--out", str(tmp_path / "y.wav"), env=bad_model)
    assert done.returncode == 2 and "does not exist" in done.stderr
