"""Errors raised by storage. ``storage`` imports nothing else of captionq, so these carry the same
``code`` / ``retryable`` attributes as ``core.errors`` and are adopted there by code
(``core.errors.as_captionq_error``). Codes are public and stable."""

from __future__ import annotations

from typing import ClassVar


class StorageError(Exception):
    """Base of every error storage raises on purpose."""

    code: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MediaNotFound(StorageError):
    """The object does not exist or cannot be accessed (404, 410, 403, missing bucket, no file)."""

    code = "media_not_found"


class StorageCredentialsMissing(StorageError):
    """The service has no credentials for the store (no AWS_ACCESS_KEY_ID, profile or role): a
    setting to fix on the service's side, not a fault of the object or of the request."""

    code = "storage_credentials_missing"


class MediaUnreadable(StorageError):
    """The source answered but gave nothing usable (empty body, refused request, broken stream)."""

    code = "media_unreadable"


class MediaTooLarge(StorageError):
    """More bytes than the configured cap (``max_bytes`` or ``max_data_uri_bytes``)."""

    code = "media_too_large"


class UnsupportedMedia(StorageError):
    """Bytes or a declared type that is not an image or video we can read, or a declared item type
    that contradicts the bytes."""

    code = "unsupported_media"


class UrlNotAllowed(StorageError):
    """A URL refused by policy or syntax: bad scheme, malformed, bucket not allowed, private address,
    path outside the media root, malformed data: URI."""

    code = "url_not_allowed"


class TransientError(StorageError):
    """Temporary failure (5xx, throttling, timeouts, connection errors) after our own retries."""

    code = "transient"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the source asked us to wait (Retry-After), if any


class InvalidManifest(StorageError):
    """A manifest that cannot be read line by line (a line over the length cap).

    ``line`` is the 1-based number of the offending line."""

    code = "invalid_request"

    def __init__(self, message: str, *, line: int) -> None:
        super().__init__(message)
        self.line = line


__all__ = [
    "InvalidManifest",
    "MediaNotFound",
    "MediaTooLarge",
    "MediaUnreadable",
    "StorageCredentialsMissing",
    "StorageError",
    "TransientError",
    "UnsupportedMedia",
    "UrlNotAllowed",
]
