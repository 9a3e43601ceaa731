"""README.md is the front door: short, every link in it and in docs/ leads somewhere, no text speaks of tools
outside the project, and every command in its command-line section runs as written."""

import os
import re
import subprocess

import pytest
from conftest import REPO, SHARED

README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
# Words for the machinery some of this project was built with, which its users do not have.
OUTSIDE = re.compile(r"\blent\b|lending|device tool|\blease\b|KINDS\.md|budget_left|carry \[", re.I)


def anchors(path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (lower case, punctuation dropped, spaces -> '-')."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_readme_is_the_front_door():
    assert len(README.read_text().splitlines()) <= 300
    for name in ("api.md", "deploy.md", "engine.md", "clients.md", "operations.md"):
        assert f"(docs/{name}" in README.read_text(), name


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_leads_somewhere(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.name}: {target}"
        if anchor:
            assert anchor in anchors(file), f"{doc.name}: {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documents_speak_only_of_the_project(doc):
    found = OUTSIDE.findall(doc.read_text())
    assert not found, f"{doc.name}: {found}"


def command_line_block() -> str:
    text = README.read_text()
    section = text[text.index("## Command line"):]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README has no bash block under 'Command line'"
    return match.group(1)


@pytest.mark.slow  # the CLI in subprocesses
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
