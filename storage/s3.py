"""S3 access: one cached boto3 client per configuration, and S3 errors → our typed errors.

Retries are ours (:mod:`storage.retry`), not botocore's, so that every transient failure is
counted and reported the same way for S3 and http. Credentials: explicit ones from the config, or
boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, instance roles).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from storage.config import StorageConfig
from storage.errors import (
    MediaNotFound,
    MediaUnreadable,
    StorageCredentialsMissing,
    StorageError,
    TransientError,
)

_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException", "InternalError",
    "ServiceUnavailable", "BandwidthLimitExceeded", "PriorRequestNotComplete", "ExpiredToken",
})
_NOT_FOUND_CODES = frozenset(
    {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound", "404", "NoSuchUpload"}
)
# Errors raised while a body streams in: the connection broke, retrying may well work.
STREAM_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, OSError,
)
_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_DEFAULT_REGION", "AWS_REGION")

_lock = threading.Lock()
_clients: dict[tuple[Any, ...], Any] = {}


def s3_client(config: StorageConfig) -> Any:
    """A thread-safe boto3 S3 client for this config (created once, then reused).

    The cache key includes the AWS_* variables boto3 itself reads, so a changed environment
    (tests, credential rotation through the environment) gets a new client."""
    key = (
        config.s3_endpoint_url, config.s3_region, config.s3_access_key_id, config.s3_secret_access_key,
        config.s3_session_token, config.connect_timeout, config.read_timeout,
        tuple(os.environ.get(k) for k in _ENV_KEYS),
    )
    with _lock:  # boto3 sessions are not thread-safe to create clients from
        client = _clients.get(key)
        if client is None:
            session = boto3.session.Session(
                aws_access_key_id=config.s3_access_key_id,
                aws_secret_access_key=config.s3_secret_access_key,
                aws_session_token=config.s3_session_token,
            )
            client = session.client(
                "s3", endpoint_url=config.s3_endpoint_url, region_name=config.s3_region,
                config=botocore.config.Config(
                    retries={"total_max_attempts": 1},  # ours, see module docstring
                    connect_timeout=config.connect_timeout, read_timeout=config.read_timeout,
                    max_pool_connections=32,
                    # Requests are SigV4 anyway; this makes presigned URLs (storage.listing) SigV4
                    # too instead of the legacy SigV2 that signs no sub-resource parameters.
                    signature_version="s3v4",
                    # Custom endpoints (SeaweedFS, MinIO) rarely do virtual-hosted buckets.
                    s3={"addressing_style": "path" if config.s3_endpoint_url else "auto"},
                ),
            )
            _clients[key] = client
        return client


def map_client_error(exc: botocore.exceptions.ClientError, url: str, op: str) -> StorageError:
    """An S3 error answer → media_not_found / transient / media_unreadable."""
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    message = str(err.get("Message", "")) or code
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
        return TransientError(f"S3 {op} {url}: {code or status} ({message})")
    if code in _NOT_FOUND_CODES or status == 404:
        what = "bucket" if code == "NoSuchBucket" else "object"
        return MediaNotFound(f"S3 {op} {url}: no such {what} ({code or status})")
    if status in (401, 403):
        return MediaNotFound(
            f"S3 {op} {url}: access denied ({code}: {message}); the service's credentials "
            "(AWS_ACCESS_KEY_ID / role) cannot access this object, or the bucket policy forbids it"
        )
    return MediaUnreadable(f"S3 {op} {url}: refused ({code or status}: {message})")


def map_boto_error(exc: BaseException, url: str, op: str) -> StorageError:
    """botocore errors that are not answers: missing credentials (permanent), network (transient)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return map_client_error(exc, url, op)
    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return StorageCredentialsMissing(
            f"S3 {op} {url}: the service has no S3 credentials (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, a profile or a role)")
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return MediaUnreadable(f"S3 {op} {url}: {exc}")
    return TransientError(f"S3 {op} {url}: {type(exc).__name__}: {exc}")


S3_ERRORS: tuple[type[BaseException], ...] = (botocore.exceptions.ClientError, *STREAM_ERRORS)
