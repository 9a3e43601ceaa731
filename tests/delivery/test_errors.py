"""Every error status of the HTTP server answers OpenAI's error body (in-process, over httpx)."""

import time

import httpx
import pytest
from fastapi.testclient import TestClient

from higgs_tts.delivery.app import create_app


@pytest.fixture
def client(service):
    return TestClient(create_app(service), raise_server_exceptions=False)


def assert_openai_error(reply: httpx.Response, status: int, code: str) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


def test_unknown_route_and_wrong_method(client):
    assert_openai_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_openai_error(client.get("/v1/audio/speech"), 405, "method_not_allowed")


def test_a_job_body_without_input_names_the_field(client):
    error = assert_openai_error(client.post("/runsync", json={"nope": 1}), 400, "invalid_input")
    assert error["param"] == "input"


def test_an_unexpected_exception_is_an_internal_error_with_a_request_id(client, service, monkeypatch):
    def broken():
        raise RuntimeError("secret detail of the failure")

    monkeypatch.setattr(service, "health", broken)
    error = assert_openai_error(client.get("/health"), 500, "internal_error")
    assert "request id" in error["message"] and "secret detail" not in error["message"]
    assert "Traceback" not in error["message"]


def test_run_refuses_a_webhook_it_cannot_call_by_name(client):
    error = assert_openai_error(client.post("/run", json={"input": {"transcript": "Hi."},
                                                          "webhook": "https://example.invalid/hook"}),
                                400, "invalid_input")
    assert error["param"] == "webhook" and "host 'example.invalid' cannot be resolved" in error["message"]


def test_run_is_bounded_and_says_busy(client, service, monkeypatch):
    from higgs_tts.delivery import jobs

    monkeypatch.setattr(jobs, "MAX_PENDING_JOBS", 2)
    service.synthesizer.model()  # loaded before the jobs, so the first one is generating when it is cancelled
    # 2048 steps: still running when the 3rd and 4th arrive on a loaded machine (400 sometimes ended first)
    slow = {"input": {"transcript": "A slow job to hold the queue.", "max_new_tokens": 2048, "seed": 1}}
    replies = [client.post("/run", json=slow) for _ in range(4)]
    assert [r.status_code for r in replies[:2]] == [200, 200]
    for reply in replies[2:]:
        assert_openai_error(reply, 503, "busy")
    deadline = time.monotonic() + 60
    while not service.synthesizer.engine_load()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    for reply in replies[:2]:
        client.post(f"/cancel/{reply.json()['id']}")
    deadline = time.monotonic() + 120
    while service.synthesizer.engine_load()[0] and time.monotonic() < deadline:  # the cancelled job stops
        time.sleep(0.2)
    assert service.synthesizer.engine_load()[0] == 0
