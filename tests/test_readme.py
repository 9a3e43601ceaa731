"""Every command in the README's command-line section runs as written."""

import os
import re
import subprocess

import pytest
from conftest import REPO, SHARED

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

README = REPO / "README.md"


def command_line_block() -> str:
    text = README.read_text()
    section = text[text.index("## Command line"):]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README has no bash block under 'Command line'"
    return match.group(1)


def test_readme_command_line_section_runs(tmp_path):
    script = command_line_block()
    assert "higgs-tts speak" in script and "tiny-checkpoint" in script
    # Run from a folder laid out like the repository: .venv here and the shared data beside it.
    workdir = tmp_path / "repo"
    workdir.mkdir()
    os.symlink(REPO / ".venv", workdir / ".venv")
    os.symlink(SHARED, tmp_path / "shared")
    tiny = tmp_path / "tiny"
    script = script.replace("/tmp/tiny", str(tiny))  # keep parallel runs apart
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "TOKENIZER_PATH")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("hello.wav", "story.wav", "dialogue.wav"):
        assert (workdir / name).stat().st_size > 44
    assert done.stdout.count("<|begin_of_text|>") == 1
    assert "belinda\tclone\tFemale voice with warm tone" in done.stdout
