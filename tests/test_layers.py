"""The layer contracts (pyproject.toml, run by `lint-imports` in scripts/test.sh) hold, and break
on an arrow that points back up."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)


def copy_of_the_package(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "higgs_tts", root / "higgs_tts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_package_keeps_every_contract(tmp_path):
    done = lint(copy_of_the_package(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_an_upward_import_from_core_breaks_the_layers(tmp_path):
    root = copy_of_the_package(tmp_path)
    text = root / "higgs_tts" / "core" / "text.py"
    text.write_text(text.read_text() + "\nfrom ..synthesis import synthesizer  # noqa\n")
    done = lint(root)
    assert done.returncode != 0
    assert "higgs_tts.core.text -> higgs_tts.synthesis.synthesizer" in done.stdout


def test_the_service_reaching_into_the_engine_breaks_a_contract(tmp_path):
    root = copy_of_the_package(tmp_path)
    speech = root / "higgs_tts" / "service" / "speech.py"
    speech.write_text(speech.read_text() + "\nfrom ..engine.scheduler import EngineBusy  # noqa\n")
    done = lint(root)
    assert done.returncode != 0 and "higgs_tts.service.speech -> higgs_tts.engine.scheduler" in done.stdout
