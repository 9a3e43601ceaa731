"""Every error status of the HTTP server answers OpenAI's error body (in-process, over httpx)."""

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
