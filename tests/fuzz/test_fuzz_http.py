"""Schema-driven fuzzing of `higgs-tts serve` from its own OpenAPI document (schemathesis), on
the tiny checkpoint: every HTTP operation the document lists (the OpenAI routes, voices, the
RunPod job routes, health, ping, metrics), a bounded number of generated cases each.

The assertion: no 5xx; every error body in the documented shape (OpenAI's `{"error": {...}}`,
or a RunPod job reply whose output says `success: false` with an error code); no traceback in any
body; the server healthy afterwards. Non-HTTP routes (WebSocket) are not in the document by design.
Generation stays cheap through a small work budget (MAX_TOTAL_FRAMES)."""

import json

import httpx
import pytest
import schemathesis
from conftest import running_server
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from higgs_tts.service.errors import STATUS

pytestmark = pytest.mark.slow  # subprocesses: servers, workers, tools

CASES_PER_OPERATION = 25  # per mode: schema-valid cases, then invalid ones
CASES: dict[str, int] = {}


@pytest.fixture(scope="module")
def fuzz_url(tiny_checkpoint, voice_prompts, tmp_path_factory):
    with running_server(tiny_checkpoint, voice_prompts, tmp_path_factory, MAX_TOTAL_FRAMES="120",
                        MAX_TRANSCRIPT_CHARS="500") as url:
        yield url


def check_body(response) -> None:
    text = response.text
    assert response.status_code < 500, f"{response.status_code}: {text[:500]}"
    assert "Traceback" not in text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    elif "application/json" in " ".join(response.headers.get("content-type", [])):  # schemathesis: lists
        body = response.json()
        if isinstance(body, dict) and body.get("status") == "FAILED":  # a RunPod job that failed
            output = body["output"][-1] if isinstance(body["output"], list) else body["output"]
            assert output["success"] is False and output["error_code"] in STATUS
            assert output["error_code"] != "internal_error", json.dumps(output)[:500]


def fuzzer(operation, mode):
    """A Hypothesis test of one operation: CASES_PER_OPERATION generated requests, each checked."""

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=CASES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        CASES[operation.label] = CASES.get(operation.label, 0) + 1
        check_body(case.call(timeout=120))

    return fuzz


def test_every_operation_survives_generated_requests(fuzz_url):
    # schemathesis's pytest loader (from_fixture) fails on this pytest (`Function._nodeid`), so each
    # operation's cases come from its Hypothesis strategy directly.
    api = schemathesis.openapi.from_url(fuzz_url + "/openapi.json")
    failures = []
    for result in api.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzzer(operation, mode)()
            except Unsatisfiable:  # no invalid request exists (an operation without parameters)
                assert mode == GenerationMode.NEGATIVE
            except Exception as exc:  # every operation runs; all failures are reported together
                failures.append(f"{operation.label} ({mode}): {type(exc).__name__}: {str(exc)[:800]}")
    assert not failures, "\n".join(failures)


# HTTP routes the OpenAPI document leaves out, fuzzed here by hand (hostile path parts included).
UNDOCUMENTED = {"/": [""], "/playground": [""], "/playground/{name}": [
    "playground.js", "..%2F..%2Fpyproject.toml", "%2e%2e/%2e%2e/etc/passwd", "nothing.exe", "%00", "a" * 300],
    "/openapi.json": [""], "/docs": [""], "/docs/oauth2-redirect": [""], "/redoc": [""]}


def test_routes_outside_the_document_survive_hostile_paths(fuzz_url, settings):
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    from higgs_tts.delivery.app import create_app
    from higgs_tts.service.speech import SpeechService
    from higgs_tts.settings import ServerSettings

    app = create_app(SpeechService(settings), ServerSettings(preload_model=False))
    documented = set(httpx.get(fuzz_url + "/openapi.json", timeout=30).json()["paths"])
    http_routes = {r.path for r in app.routes if isinstance(r, APIRoute | Route)}  # WebSocket routes: not HTTP
    assert http_routes - documented <= set(UNDOCUMENTED), "an HTTP route neither documented nor fuzzed"
    for path, parts in UNDOCUMENTED.items():
        for part in parts:
            url = fuzz_url + path.replace("{name}", part)
            response = httpx.get(url, timeout=30, follow_redirects=True)
            CASES[f"GET {path}"] = CASES.get(f"GET {path}", 0) + 1
            assert response.status_code < 500 and "Traceback" not in response.text, url
            if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            assert "[project]" not in response.text and "root:" not in response.text  # no file outside static/


def test_server_is_healthy_after_fuzzing(fuzz_url, pytestconfig):
    assert httpx.get(fuzz_url + "/health", timeout=30).status_code == 200
    assert httpx.post(fuzz_url + "/runsync", json={"input": {"transcript": "Still here.", "max_new_tokens": 20}},
                      timeout=120).json()["status"] == "COMPLETED"
    operations = sorted(CASES)
    line = f"HTTP fuzzing: {sum(CASES.values())} cases over {len(operations)} operations"
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    print(line, operations)
    # every route the server has is in its document, and was fuzzed
    paths = set(httpx.get(fuzz_url + "/openapi.json", timeout=30).json()["paths"])
    assert {"/v1/audio/speech", "/v1/voices", "/v1/voices/{name}", "/runsync", "/run", "/status/{job_id}",
            "/cancel/{job_id}", "/stream/{job_id}", "/health", "/ping", "/metrics"} <= paths
    assert paths <= {label.split(" ", 1)[1] for label in operations}
