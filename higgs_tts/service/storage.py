"""Delivery of audio to S3 or an S3-compatible store, with boto3's default credential chain."""

from __future__ import annotations

import concurrent.futures
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_KEY_BYTES = 1024


# Uploads run here so that a deadline can end the wait for one (a thread cannot be killed).
_ONE_UPLOAD = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="s3-upload")


class StorageError(RuntimeError):
    """An upload or presign that failed; the message never holds credentials."""


def validate_bucket(bucket: str) -> str:
    if not BUCKET_PATTERN.match(bucket) or ".." in bucket:
        raise ValueError("must be a valid bucket name (3 to 63 lowercase letters, digits, '.' or '-')")
    return bucket


def validate_key(key: str) -> str:
    if not key or key != key.strip():
        raise ValueError("must be a non-empty string without surrounding whitespace")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"must be at most {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise ValueError("must not start with '/'")
    if ".." in key or any(part == "." for part in key.split("/")):
        raise ValueError("must not contain '..' or '.' path segments")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ValueError("must not contain control characters")
    return key


def generated_key(extension: str) -> str:
    now = datetime.now(UTC)
    return f"higgs-tts/{now:%Y/%m/%d}/{now:%H%M%S}-{uuid.uuid4().hex[:12]}.{extension}"


@dataclass(frozen=True)
class S3Target:
    """Where and with which credentials to upload. None fields fall back to boto3's defaults."""

    bucket: str
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str | None = None

    @classmethod
    def from_runpod(cls, s3_config: dict, bucket: str | None) -> S3Target:
        """RunPod's per-job `s3Config` (accessId, accessSecret, bucketName, endpointUrl)."""
        return cls(
            bucket=bucket or s3_config.get("bucketName") or "",
            endpoint_url=s3_config.get("endpointUrl") or None,
            access_key_id=s3_config.get("accessId") or None,
            secret_access_key=s3_config.get("accessSecret") or None,
        )


@dataclass(frozen=True)
class Upload:
    bucket: str
    key: str
    url: str  # s3://bucket/key
    presigned_url: str
    seconds: float


class S3Storage:
    def __init__(self, presign_seconds: int = 3600, timeout_seconds: float = 10.0, endpoint_url: str | None = None,
                 region: str = "us-east-1", deadline_seconds: float = 45.0) -> None:
        self.presign_seconds = presign_seconds
        self.timeout_seconds = timeout_seconds  # per connect and per read
        # The whole upload, retries included: a store that trickles bytes never trips a read timeout.
        self.deadline_seconds = deadline_seconds
        self.endpoint_url, self.region = endpoint_url, region  # defaults for targets that name none

    def _client(self, target: S3Target):
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=self.timeout_seconds,
            read_timeout=self.timeout_seconds,
            retries={"max_attempts": 2, "mode": "standard"},
            signature_version="s3v4",
        )
        return boto3.client(
            "s3",
            endpoint_url=target.endpoint_url or self.endpoint_url,
            region_name=target.region or self.region,
            aws_access_key_id=target.access_key_id,
            aws_secret_access_key=target.secret_access_key,
            config=config,
        )

    def upload(self, target: S3Target, key: str, data: bytes, content_type: str) -> Upload:
        import time

        from botocore.exceptions import BotoCoreError, ClientError

        started = time.perf_counter()
        try:
            client = self._client(target)
            put = _ONE_UPLOAD.submit(client.put_object, Bucket=target.bucket, Key=key, Body=data,
                                     ContentType=content_type)
            try:
                put.result(timeout=self.deadline_seconds)
            except concurrent.futures.TimeoutError:
                client.close()  # the abandoned request's connection goes with it
                raise StorageError(f"S3 upload to bucket {target.bucket!r} failed: no answer within "
                                   f"{self.deadline_seconds:g} s (the store is too slow)") from None
            presigned = client.generate_presigned_url(
                "get_object", Params={"Bucket": target.bucket, "Key": key}, ExpiresIn=self.presign_seconds
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise StorageError(
                f"S3 upload to bucket {target.bucket!r} failed: {error.get('Code', 'error')}: "
                f"{error.get('Message', '')}".rstrip(": ")
            ) from None
        except (BotoCoreError, ValueError) as exc:  # ValueError: a malformed endpoint URL
            raise StorageError(f"S3 upload to bucket {target.bucket!r} failed: {type(exc).__name__}: {exc}") from None
        return Upload(
            bucket=target.bucket,
            key=key,
            url=f"s3://{target.bucket}/{key}",
            presigned_url=presigned,
            seconds=time.perf_counter() - started,
        )
