"""The HTTP server's RunPod job routes in-process: webhooks to a loopback receiver, and metrics."""

import contextlib
import http.server
import json
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient
from service.test_speech import BASE

from higgs_tts.delivery import webhooks
from higgs_tts.delivery.app import create_app
from higgs_tts.delivery.webhooks import WebhookRefused, check_url
from higgs_tts.settings import ServerSettings


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on loopback: answers `failures` 500s first, then 200s; keeps every body."""

    def __init__(self, failures=0):
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.failures, self.bodies, self.tries = failures, [], 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/hook?token=abc"


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.tries += 1
        status = 500 if self.server.tries <= self.server.failures else 200
        if status == 200:
            self.server.bodies.append(body)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def receiver():
    made = []

    def start(failures=0):
        server = Receiver(failures)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made.append(server)
        return server

    yield start
    for server in made:
        server.shutdown()


@pytest.fixture
def client(service, monkeypatch):
    monkeypatch.setattr(webhooks, "WEBHOOK_BACKOFF_SECONDS", (0.05, 0.05))
    app = create_app(service, ServerSettings(preload_model=False, webhook_allowlist=("127.0.0.1",)))
    with TestClient(app) as test_client:
        yield test_client


def wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_webhook_gets_the_finished_job_after_a_failed_try(client, receiver):
    hook = receiver(failures=1)
    job_id = client.post("/run", json={"input": {"transcript": "To the hook.", **BASE},
                                       "webhook": hook.url}).json()["id"]
    wait_for(lambda: hook.bodies)
    [body] = hook.bodies
    assert hook.tries == 2  # the first answer was a 500: tried again
    assert body["id"] == job_id and body["status"] == "COMPLETED" and body["output"]["success"] is True
    assert body == client.get(f"/status/{job_id}").json()


def test_a_webhook_gives_up_after_its_bounded_tries(client, receiver):
    hook = receiver(failures=99)
    client.post("/run", json={"input": {"transcript": "Nobody listens.", **BASE}, "webhook": hook.url})
    wait_for(lambda: hook.tries >= webhooks.WEBHOOK_ATTEMPTS)
    time.sleep(0.5)
    assert hook.tries == webhooks.WEBHOOK_ATTEMPTS and hook.bodies == []


class Hanging:
    """A webhook receiver on loopback that accepts every connection and never answers; counts the
    connections accepted and those its caller gave up on (closed)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.accepted = self.given_up = 0
        self.connections = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _accept(self):
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.sock.accept()
                self.connections.append(connection)
                self.accepted += 1
                threading.Thread(target=self._hold, args=(connection,), daemon=True).start()

    def _hold(self, connection):
        with contextlib.suppress(OSError):
            while connection.recv(65536):  # read the request; never answer
                pass
            self.given_up += 1

    def close(self):
        self.sock.close()
        for connection in self.connections:
            connection.close()


def test_a_receiver_that_never_answers_delays_no_other_receiver(client, receiver):
    hanging, healthy = Hanging(), receiver()
    try:
        for _ in range(4):  # as many as the old shared pool had threads
            client.post("/run", json={"input": {"action": "health"}, "webhook": hanging.url})
        wait_for(lambda: hanging.accepted >= 1)  # a try to the hanging receiver is in flight
        job_id = client.post("/run", json={"input": {"action": "health"}, "webhook": healthy.url}).json()["id"]
        wait_for(lambda: healthy.bodies, timeout=60)
        # delivered while every try to the hanging receiver still waits for its answer: it waited for none
        assert hanging.given_up == 0
        assert healthy.bodies[0]["id"] == job_id
        assert hanging.accepted == 1  # that receiver's webhooks go one at a time, on its own thread
    finally:
        hanging.close()


def test_webhook_bounds_drop_and_log_rather_than_grow(monkeypatch, caplog):
    sent = threading.Event()
    release = threading.Event()

    def slow(url, reply, allowlist):
        sent.set()
        release.wait(30)

    monkeypatch.setattr(webhooks, "MAX_QUEUED_PER_RECEIVER", 2)
    monkeypatch.setattr(webhooks, "MAX_RECEIVERS", 2)
    sender = webhooks.WebhookSender(send=slow)
    try:
        assert sender.send("http://a.example/hook", {"id": "1"})
        sent.wait(10)  # the first is being sent; two more may wait
        assert sender.send("http://a.example/hook", {"id": "2"}) and sender.send("http://a.example/x", {"id": "3"})
        assert not sender.send("http://a.example:80/hook", {"id": "4"})  # the same receiver, its queue full
        assert sender.send("https://a.example/hook", {"id": "5"})  # another port: another receiver
        assert not sender.send("http://b.example/hook", {"id": "6"})  # a third receiver: over MAX_RECEIVERS
        assert "webhook of job 4 dropped" in caplog.text and "webhook of job 6 dropped" in caplog.text
    finally:
        release.set()


def test_private_webhooks_are_refused_unless_allow_listed(client):
    for url, rule in (("http://10.1.2.3/hook", "private address"), ("http://localhost:9/x", "loopback address"),
                      ("ftp://example.com/x", "http://"), ("http://user:pw@example.com/", "credentials")):
        reply = client.post("/run", json={"input": {"transcript": "x"}, "webhook": url})
        assert reply.status_code == 400, url
        error = reply.json()["error"]
        assert error["param"] == "webhook" and rule in error["message"]
    with pytest.raises(WebhookRefused, match="169.254.169.254"):
        check_url("http://169.254.169.254/latest/meta-data")  # the cloud metadata service
    assert check_url("http://10.1.2.3/hook", allowlist=("10.1.2.3",)) == "http://10.1.2.3/hook"


def metric(text: str, endpoint: str, status: str) -> float:
    for line in text.splitlines():
        if line.startswith("higgs_requests_total{") and f'endpoint="{endpoint}"' in line \
                and f'status="{status}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_every_job_route_is_counted_with_what_the_job_did(client):
    ok = client.post("/runsync", json={"input": {"transcript": "Fine.", **BASE}})
    bad = client.post("/runsync", json={"input": {"transcript": "x", "ref_audio": "nobody"}})
    assert ok.json()["status"] == "COMPLETED" and bad.json()["status"] == "FAILED"
    job_id = client.post("/run", json={"input": {"transcript": "Later.", **BASE}}).json()["id"]
    wait_for(lambda: client.get(f"/status/{job_id}").json()["status"] == "COMPLETED")
    client.get("/status/job-none")
    client.post("/stream/job-none")
    text = client.get("/metrics").text
    assert metric(text, "runsync", "200") == 1 and metric(text, "runsync", "400") == 1  # unknown voice: 400
    assert metric(text, "run", "200") == 1
    assert metric(text, "status", "200") >= 1 and metric(text, "status", "404") == 1
    assert metric(text, "stream", "404") == 1
    assert 'higgs_request_errors_total{code="unknown_voice",endpoint="runsync"} 1.0' in text


def test_finished_results_are_bounded_by_bytes_and_say_so(client, monkeypatch):
    from higgs_tts.delivery import jobs

    same = {"input": {"transcript": "A result.", **BASE}}  # the same take twice: results of one size
    first = client.post("/run", json=same).json()["id"]
    wait_for(lambda: client.get(f"/status/{first}").json()["status"] == "COMPLETED")
    size = len(json.dumps(client.get(f"/status/{first}").json()))
    monkeypatch.setattr(jobs, "MAX_RESULT_BYTES", size + size // 2)  # room for one result, not two
    second = client.post("/run", json=same).json()["id"]
    wait_for(lambda: client.get(f"/status/{second}").json()["status"] == "COMPLETED")
    gone = client.get(f"/status/{first}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "expired"
    assert "MB of results are kept" in gone.json()["error"]["message"]
    assert client.get(f"/status/{second}").json()["output"]["success"] is True
    unknown = client.get("/status/job-never-was")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_finished_results_expire_after_their_age(client, monkeypatch):
    from higgs_tts.delivery import jobs

    job_id = client.post("/run", json={"input": {"action": "health"}}).json()["id"]
    wait_for(lambda: client.get(f"/status/{job_id}").json()["status"] == "COMPLETED")
    monkeypatch.setattr(jobs, "RESULT_SECONDS", 0)
    time.sleep(0.01)
    expired = client.get(f"/status/{job_id}")
    assert expired.status_code == 404 and expired.json()["error"]["code"] == "expired"
    assert "kept 0 minutes" in expired.json()["error"]["message"]
    assert client.get(f"/stream/{job_id}").json()["error"]["code"] == "expired"


def test_a_running_job_is_never_dropped_to_keep_the_newest(monkeypatch):
    """MAX_JOBS_KEPT drops the oldest finished results; a long job submitted first stays IN_PROGRESS
    and its result is kept when it ends, however many short jobs finish meanwhile."""
    from higgs_tts.delivery import jobs

    release = threading.Event()

    class Service:  # the store's logic alone: one job waits, the others answer at once
        def handle(self, job_input, job_id, cancel=None, outcome=None):
            if job_input.get("wait"):
                release.wait(30)
            return {"success": True, "n": job_input["n"]}

    monkeypatch.setattr(jobs, "MAX_JOBS_KEPT", 3)
    store = jobs.Jobs(Service(), workers=2)
    long_job = store.submit({"n": 0, "wait": True})
    wait_for(lambda: store.get(long_job)["status"] == "IN_PROGRESS")
    short = []
    for n in range(1, 7):
        short.append(store.submit({"n": n}))
        wait_for(lambda: store.get(short[-1]) is not None and store.get(short[-1])["status"] == "COMPLETED")
    assert store.get(long_job)["status"] == "IN_PROGRESS"
    assert store.get(short[0]) is None and "newest 3 jobs" in store.gone(short[0])
    release.set()
    wait_for(lambda: store.get(long_job)["status"] == "COMPLETED")
    assert store.get(long_job)["output"]["n"] == 0


def test_a_webhook_connects_to_the_address_it_checked_not_through_a_proxy(receiver, monkeypatch):
    # a proxy from the environment would connect by name, past the address check
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    hook = receiver()
    assert webhooks.deliver(hook.url, {"id": "job-1", "status": "COMPLETED"}, allowlist=("127.0.0.1",),
                            sleep=lambda _: None)
    assert hook.bodies == [{"id": "job-1", "status": "COMPLETED"}]
