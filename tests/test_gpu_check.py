"""scripts/gpu-check.sh's summary and its rehearsal on CPU (scripts/gpu-dryrun.sh)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

STAGES = REPO / "scripts" / "gpu_stages.py"
# where scripts/gpu-dryrun.sh keeps its environment
DRYRUN_DIR = Path(os.environ.get("GPU_DRYRUN_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                  / "higgs-tts-gpu-dryrun")
DRYRUN_VENV = DRYRUN_DIR / "venv" / ".ready"


def test_summary_fits_forty_lines_and_names_every_failure(tmp_path):
    # As many figures as a full GPU run records, a bench result and a test run with failures.
    with open(tmp_path / "results.jsonl", "w") as out:
        for i in range(26):
            out.write(json.dumps({"stage": "smoke", "name": f"figure {i}", "value": "x" * 400,
                                  "status": "FAIL" if i == 3 else "ok"}) + "\n")
    bench = {"device": "NVIDIA H200", "dtype": "bfloat16", "roofline_frames_per_s": 746.0, "copy_bandwidth_gbs": 4300.0,
             "first_frame_ms": 40.0, "clone_prefill_ms": 30.0, "stream_first_audio_ms": 280.0, "stream_underruns": 0,
             "reference_frames_per_s": 30.0, "codec_decode_s_per_min": 0.5,
             "batches": [{"batch": b, "frames_per_s_per_stream": 200.0, "audio_seconds_per_s": 8.0 * b}
                         for b in (1, 8, 32, 64)],
             "concurrency": [{"streams": n, "audio_seconds_per_s": 250.0, "x_real_time_per_stream": 5.0,
                              "time_to_first_audio_ms": 300.0} for n in (8, 64)]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    anatomy = {"layers": 28, "captured_kernels_per_layer": 13, "captured_kernels_per_step": 472,
               "eager_kernels_per_step": 0.19, "syncs_per_burst": 1, "prefill_kernels": 2067, "prefill_syncs": 427,
               "frames_per_s_b1": 450.0, "roofline_frames_per_s": 746.0, "roofline_fraction": 0.603}
    (tmp_path / "anatomy.json").write_text(json.dumps(anatomy))
    failures = "".join(f"FAILED tests/engine/test_engine.py::test_{i} - AssertionError\n" for i in range(9))
    (tmp_path / "tests.txt").write_text(failures + "9 failed, 41 passed in 100.00s\n")
    done = subprocess.run([sys.executable, str(STAGES), "summary", "--stages", "env ok in 3 s;smoke FAIL(rc=1) in 9 s"],
                          env={**os.environ, "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) <= 40
    assert "smoke FAIL(rc=1) in 9 s" in lines[1]
    assert any(line.startswith("FAIL smoke  figure 3") for line in lines)
    assert any("b64 200 f/s/stream 512 aud-s/s" in line for line in lines)
    assert any("64 streams 250 aud-s/s" in line and "TTFA 300 ms" in line for line in lines)
    assert any("first audio 280 ms" in line for line in lines)
    assert any("13 kernels/layer" in line and "1 sync/burst" in line and "60% of roofline 746" in line
               for line in lines)
    assert sum(line.startswith("FAIL tests") for line in lines) == 5  # the first five, then the count
    assert any("9 failed, 41 passed" in line for line in lines)
    assert all(len(line) <= 240 for line in lines)


@pytest.mark.skipif(not DRYRUN_VENV.is_file(), reason="no Python 3.12 rehearsal environment (scripts/gpu-dryrun.sh "
                                                        "--setup makes one; it downloads ~530 MB)")
def test_dry_run_goes_through_every_stage(tmp_path):
    done = subprocess.run(["bash", "scripts/gpu-dryrun.sh"], cwd=REPO, env={**os.environ, "OUT": str(tmp_path)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout[done.stdout.index("gpu-check summary"):]
    for stage in ("env", "smoke", "timing", "anatomy", "bench", "tests"):
        assert f"{stage} ok in" in summary, summary
    assert "FAIL" not in summary, summary
    assert "ok   env    transformers in use: 5.23" in summary  # the carried wheel shadows the 5.17 there
    assert "skipped: no CUDA" in summary
    assert " passed" in summary


# What scripts/gpu-check.sh's tests stage runs, and the project's dependencies a GPU host's image may lack
# (it has torch, transformers, numpy, httpx and what .gpu/ carries: no pydantic, no web or S3 stack).
GPU_TESTS = ("tests/engine", "tests/synthesis", "tests/tools/test_bench.py")
ABSENT_ON_GPU_HOST = ("pydantic", "fastapi", "starlette", "uvicorn", "boto3", "botocore", "av", "runpod", "websockets",
                      "wyoming", "moto")
SERVICE_FIXTURES = {"service", "worker", "streaming_worker", "s3_server", "s3_env"}
COLLECT_WITHOUT = """
import sys
absent, needs_service, args = set(sys.argv[1].split(",")), set(sys.argv[2].split(",")), sys.argv[3:]

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU host)", name=name)

class NoServiceFixtures:
    def pytest_collection_modifyitems(self, items):
        self.bad = [item.nodeid for item in items if needs_service & set(item.fixturenames)]

sys.meta_path.insert(0, Absent())
import pytest
check = NoServiceFixtures()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *args], plugins=[check])
print("needs the service layer:", check.bad)
sys.exit(int(code) or bool(check.bad))
"""


def test_the_gpu_stage_tests_need_nothing_a_gpu_host_lacks():
    """The tests stage of gpu-check imports neither the service layer nor its dependencies, in the tests or
    their fixtures (a lent GPU's minutes are not spent on an ImportError)."""
    script = (REPO / "scripts" / "gpu-check.sh").read_text()
    assert " ".join(GPU_TESTS).replace(" tests/tools", " \\\n    tests/tools") in script
    done = subprocess.run([sys.executable, "-c", COLLECT_WITHOUT, ",".join(ABSENT_ON_GPU_HOST),
                           ",".join(SERVICE_FIXTURES), *GPU_TESTS], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "needs the service layer: []" in done.stdout
    assert "tests collected" in done.stdout
