"""ref_audio_url's fetcher against real HTTP servers on loopback (and moto's S3 server)."""

import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from conftest import make_bucket

from higgs_tts.service.fetch import FetchError, blocked_range, check_url, fetch

CLIP = b"RIFF" + b"\0" * 4000


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/clip.wav":
            self._send(CLIP)
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
        elif self.path == "/big":  # no Content-Length: only counting while reading finds it too large
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/slow":  # a byte every 0.2 s: each read is quick, the whole never ends
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        elif self.path == "/missing":
            self.send_error(404)
        else:
            self._send(f"{self.headers['Host']}".encode())

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that hung up on /slow or /big
        pass


@pytest.fixture(scope="module")
def web():
    server = QuietServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


LOOPBACK = ("127.0.0.1",)


def test_loopback_is_refused_by_default_and_fetched_when_allow_listed(web):
    with pytest.raises(FetchError, match="must use https"):
        fetch(web + "/clip.wav", (), 10_000, 5)
    with pytest.raises(FetchError, match="resolves to 127.0.0.1, a loopback address"):
        fetch(web.replace("http://", "https://") + "/clip.wav", (), 10_000, 5)
    assert fetch(web + "/clip.wav", LOOPBACK, 10_000, 5) == CLIP


def test_the_connection_keeps_the_host_name(web):
    port = web.rsplit(":", 1)[1]
    assert fetch(f"http://localhost:{port}/host", ("localhost",), 10_000, 5) == f"localhost:{port}".encode()


@pytest.mark.parametrize("to", [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "https://10.0.0.1/x", "https://[::1]/x", "https://[::ffff:127.0.0.1]/x", "https://100.64.0.1/x",
    "http://localhost/x",  # another loopback name, not allow-listed
])
def test_a_redirect_is_checked_like_the_first_url(web, to):
    with pytest.raises(FetchError) as err:
        fetch(f"{web}/redirect?to={to}", LOOPBACK, 10_000, 5)
    assert "https" in str(err.value) or "address" in str(err.value), err.value


def test_a_redirect_to_an_allowed_place_is_followed(web):
    assert fetch(f"{web}/redirect?to=/clip.wav", LOOPBACK, 10_000, 5) == CLIP


def test_an_over_size_body_is_refused_while_reading(web):
    with pytest.raises(FetchError, match="above the limit of 100000 bytes") as err:
        fetch(web + "/big", LOOPBACK, 100_000, 5)
    assert err.value.code == "too_large"
    with pytest.raises(FetchError, match="4004 bytes, above the limit of 1000 bytes"):
        fetch(web + "/clip.wav", LOOPBACK, 1000, 5)  # Content-Length says so before reading


def test_a_slow_server_is_cut_off_at_the_deadline(web):
    started = time.monotonic()
    with pytest.raises(FetchError, match="no complete answer within 1 s"):
        fetch(web + "/slow", LOOPBACK, 10_000, 1.0)
    print(f"slow server cut off after {time.monotonic() - started:.2f} s (deadline 1 s)")


def test_other_refusals_say_why(web):
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(web + "/missing", LOOPBACK, 10_000, 5)
    with pytest.raises(FetchError, match="credentials"):
        check_url("https://user:pw@example.com/a.wav", ())
    with pytest.raises(FetchError, match="https"):
        check_url("file:///etc/passwd", ())
    with pytest.raises(FetchError, match="cannot be resolved"):
        check_url("https://no-such-host.invalid/a.wav", ())


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.1", "private"), ("172.16.0.1", "private"),
    ("169.254.169.254", "link-local"), ("fd00:ec2::254", "private"), ("100.100.100.200", "not a public"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("::ffff:10.0.0.1", "private"),
    ("2002:7f00:1::", "loopback"), ("2002:a9fe:a9fe::", "link-local"),  # 6to4 around 127.0.0.1, metadata
])
def test_blocked_ranges(address, kind):
    assert kind in blocked_range(ipaddress.ip_address(address))


def test_public_addresses_pass():
    assert blocked_range(ipaddress.ip_address("93.184.216.34")) is None
    assert blocked_range(ipaddress.ip_address("2606:4700::1111")) is None


@pytest.mark.slow  # a subprocess
def test_an_s3_presigned_url_is_fetched(s3_server):
    make_bucket(s3_server, "voices-in")
    client = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"])
    client.put_object(Bucket="voices-in", Key="clips/me.wav", Body=CLIP)
    url = client.generate_presigned_url("get_object", Params={"Bucket": "voices-in", "Key": "clips/me.wav"},
                                        ExpiresIn=300)
    assert "Signature=" in url or "X-Amz-Signature=" in url
    assert fetch(url, LOOPBACK, 10_000, 10) == CLIP  # signed for the Host header the fetch keeps
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(url.replace("me.wav", "nobody.wav"), LOOPBACK, 10_000, 10)
