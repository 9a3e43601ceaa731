import httpx
import pytest
from conftest import make_bucket

from higgs_tts.service.storage import S3Storage, S3Target, StorageError, generated_key, validate_key


def test_upload_and_presigned_download(s3_env):
    make_bucket(s3_env, "storage-test")
    upload = S3Storage(presign_seconds=600).upload(S3Target("storage-test"), "a/b.wav", b"RIFFdata", "audio/wav")
    assert upload.url == "s3://storage-test/a/b.wav"
    response = httpx.get(upload.presigned_url)
    assert response.status_code == 200 and response.content == b"RIFFdata"
    assert response.headers["content-type"] == "audio/wav"
    assert "X-Amz-Expires=600" in upload.presigned_url


def test_missing_bucket_is_a_storage_error_without_secrets(s3_env):
    with pytest.raises(StorageError) as err:
        S3Storage().upload(S3Target("no-such-bucket"), "k.wav", b"x", "audio/wav")
    assert "NoSuchBucket" in str(err.value)
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


def test_unreachable_endpoint_is_a_storage_error(s3_env):
    target = S3Target("bucket-x", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StorageError, match="failed"):
        S3Storage(timeout_seconds=2).upload(target, "k.wav", b"x", "audio/wav")


def test_runpod_s3_config_is_used(s3_env, monkeypatch):
    make_bucket(s3_env, "runpod-bucket")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    config = {"accessId": "id", "accessSecret": "secret", "bucketName": "runpod-bucket",
              "endpointUrl": s3_env["AWS_ENDPOINT_URL"]}
    upload = S3Storage().upload(S3Target.from_runpod(config, None), "k.wav", b"abc", "audio/wav")
    assert upload.bucket == "runpod-bucket"
    assert httpx.get(upload.presigned_url).content == b"abc"


def test_generated_keys_are_unique_and_valid():
    keys = {generated_key("wav") for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert validate_key(key) == key and key.endswith(".wav")


def test_a_store_that_trickles_its_answer_is_given_up_at_the_deadline(s3_env):
    """A server on loopback that accepts the upload and answers one byte every second never trips
    a read timeout; the upload's deadline ends it."""
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def trickle():
        connection, _ = listener.accept()
        connection.settimeout(1.0)
        with connection:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                if stop.is_set():
                    return
                try:
                    connection.recv(65536)
                except OSError:
                    pass
                connection.sendall(bytes([byte]))
                time.sleep(1.0)

    threading.Thread(target=trickle, daemon=True).start()
    target = S3Target("slow-bucket", endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        with pytest.raises(StorageError, match="no answer within 3 s"):
            S3Storage(timeout_seconds=5, deadline_seconds=3).upload(target, "k.wav", b"x" * 1000, "audio/wav")
    finally:
        stop.set()
        listener.close()
