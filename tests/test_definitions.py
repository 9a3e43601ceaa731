"""Every default, bound and shared value is written once: the command line, the job schema, the OpenAI
body and the synthesizer's request all read the same definition (core/sampling.py knobs, settings.py,
core/audio.py), and no second copy of a shared value is left in the package."""

import ast
import tomllib

import pytest
from conftest import REPO

import higgs_tts
from higgs_tts.cli import build_parser
from higgs_tts.core.audio import MAX_SPEED, MIN_SPEED
from higgs_tts.core.sampling import ChunkParams, chunk_knobs
from higgs_tts.delivery.openai import RESULT_HEADERS, SpeechRequest
from higgs_tts.service.schema import GenerateInput
from higgs_tts.settings import DEFAULT_MODEL, DEFAULT_TOKENIZER, ENGINE_ALIASES, ENGINES, ServerSettings, Settings
from higgs_tts.synthesis.synthesizer import SynthesisRequest

PACKAGE = REPO / "higgs_tts"


def bounds(model, name: str) -> dict:
    """A pydantic field's ge/gt/le."""
    found = {}
    for rule in model.model_fields[name].metadata:
        found.update({k: getattr(rule, k) for k in ("ge", "gt", "le") if hasattr(rule, k)})
    return found


@pytest.mark.parametrize("knob", chunk_knobs(), ids=lambda k: k.name)
def test_chunk_knobs_have_one_default_and_one_set_of_bounds(knob):
    speak = build_parser().parse_args(["speak", "--text", "x"])
    assert getattr(speak, knob.name) == knob.default
    assert GenerateInput.model_fields[knob.name].default == knob.default
    assert bounds(GenerateInput, knob.name) == {k: v for k, v in (("ge", knob.ge), ("le", knob.le)) if v is not None}
    assert getattr(SynthesisRequest(text="x"), knob.name) == knob.default
    # Just past the upper bound is refused by the synthesizer as by the schema (they disagreed once).
    with pytest.raises(ValueError, match=knob.name):
        SynthesisRequest(text="x", **{knob.name: knob.le + 1})
    with pytest.raises(ValueError, match=knob.name):
        ChunkParams(**{knob.name: knob.le + 1})


def test_speed_bounds_are_the_same_for_jobs_and_the_openai_body():
    for model in (GenerateInput, SpeechRequest):
        assert bounds(model, "speed") == {"ge": MIN_SPEED, "le": MAX_SPEED}


def test_the_cli_offers_the_engines_settings_accepts():
    engine = next(a for a in build_parser()._subparsers._group_actions[0].choices["speak"]._actions
                  if a.dest == "engine")
    assert tuple(engine.choices) == (*ENGINES, *ENGINE_ALIASES)


def test_browsers_may_read_every_result_header():
    from higgs_tts.delivery.app import create_app
    from higgs_tts.service.speech import SpeechService

    app = create_app(SpeechService(), ServerSettings(cors_origins=("https://app.example",)))
    cors = next(m for m in app.user_middleware if "expose_headers" in m.kwargs)
    assert cors.kwargs["expose_headers"] == list(RESULT_HEADERS)
    assert app.version == higgs_tts.__version__


def test_the_version_is_read_from_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "higgs_tts.__version__"}


def test_settings_defaults_are_the_fields_defaults(monkeypatch):
    for name in ("MODEL_PATH", "TOKENIZER_PATH", "MODEL_REVISION", "ENGINE", "ENGINE_SLOTS", "MAX_CHUNKS"):
        monkeypatch.delenv(name, raising=False)
    from_env, default = Settings.from_env(), Settings()
    assert (from_env.model_path, from_env.model_revision, from_env.engine, from_env.engine_slots) == (
        default.model_path, default.model_revision, default.engine, default.engine_slots)


def module_names_and_strings() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Module-level assigned names and string constants (docstrings aside), each with the files holding them."""
    names: dict[str, list[str]] = {}
    strings: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value,
                                                                                                   ast.Constant)}
        where = str(path.relative_to(REPO))
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name):
                            names.setdefault(leaf.id, []).append(where)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                strings.setdefault(node.value, []).append(where)
    return names, strings


def test_shared_values_are_defined_once_in_the_package():
    names, strings = module_names_and_strings()
    assert names["FRAMES_PER_SECOND"] == ["higgs_tts/core/audio.py"]
    for repo in (DEFAULT_MODEL, DEFAULT_TOKENIZER):
        assert strings[repo] == ["higgs_tts/settings.py"], repo
    for header in RESULT_HEADERS:
        assert strings[header] == ["higgs_tts/delivery/openai.py"], header
    assert strings[higgs_tts.__version__] == ["higgs_tts/__init__.py"]


def test_the_generate_path_has_one_name_and_reference_stays_accepted():
    from higgs_tts.synthesis.generator import GENERATORS, generator_kind

    assert Settings(engine="reference").engine == Settings(engine="generate").engine == "generate"
    assert set(GENERATORS) == set(ENGINES) - {"auto"}
    for name in ("generate", "reference", "fast"):
        assert build_parser().parse_args(["speak", "--text", "x", "--engine", name]).engine == name
    assert generator_kind(Settings(engine="reference")) == "generate"
    assert generator_kind(Settings(engine="auto")) == generator_kind(Settings(engine="fast")) == "fast"
    with pytest.raises(ValueError, match="engine must be one of auto, fast, generate"):
        Settings(engine="batched")


# The audit record's writers and the metrics' writers: a surface tells its request's Outcome what
# happened, and service/outcome.py alone writes them (the record and the metrics define them).
AUDIT_WRITERS = {"succeed", "fail", "emit", "facts", "status", "error_code"}
METRIC_WRITERS = {"observe", "record", "first_audio", "requests", "errors", "duration", "real_time_factor",
                  "audio_seconds"}


def receiver(node: ast.Attribute) -> str | None:
    """`audit` for audit.fail / outcome.audit.fail, `metrics` for self.metrics.observe, else None."""
    value = node.value
    name = value.id if isinstance(value, ast.Name) else value.attr if isinstance(value, ast.Attribute) else None
    return name if name in ("audit", "metrics") else None


def test_audit_lines_and_request_metrics_are_written_by_the_outcome_only():
    writers: dict[str, set[str]] = {"audit": set(), "metrics": set()}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and (kind := receiver(node)):
                if node.attr in (AUDIT_WRITERS if kind == "audit" else METRIC_WRITERS):
                    writers[kind].add(str(path.relative_to(REPO)))
    assert writers == {"audit": {"higgs_tts/service/outcome.py"}, "metrics": {"higgs_tts/service/outcome.py"}}


# The surfaces that read a synthesis or a streamed job, and the typed events they match on.
STREAM_READERS = ("service/speech.py", "delivery/runpod.py", "delivery/openai.py", "delivery/wyoming.py")


def test_the_stream_events_are_defined_once_and_every_surface_reads_them():
    classes: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append(str(path.relative_to(PACKAGE)))
    for event in ("Audio", "ChunkEnd", "Done"):
        assert classes[event] == ["synthesis/events.py"], event
    assert classes["Final"] == ["service/events.py"]
    for reader in STREAM_READERS:
        tree = ast.parse((PACKAGE / reader).read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and (node.module or "").endswith("events") for alias in node.names}
        matched = {node.cls.id for node in ast.walk(tree) if isinstance(node, ast.MatchClass)
                   and isinstance(node.cls, ast.Name)}
        assert {"Audio", "ChunkEnd"} <= imported & matched, reader  # a match on the classes, not on arrays
        tested = {leaf.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and getattr(node.func, "id", None) == "isinstance" for leaf in ast.walk(node.args[1])
                  if isinstance(leaf, ast.Attribute)}
        assert "ndarray" not in tested, reader  # no surface tells audio from the result by its type
