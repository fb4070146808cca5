"""The one error hierarchy.

Every error carries a stable snake_case ``code`` (part of the public contract), whether it is
``retryable`` and the HTTP status it maps to. ``api.problems`` turns them into RFC 9457 problem
details; ``worker`` turns them into job errors. ``models`` and ``storage`` stay free of our
imports and raise their own exceptions with the same ``code``/``retryable`` attributes;
:func:`as_captionq_error` adopts those.
"""

from __future__ import annotations

from typing import Any


class CaptionqError(Exception):
    # Plain class attributes (not ClassVar): an instance may carry a more specific ``code``.
    code: str = "internal"
    http_status: int = 500
    retryable: bool = False
    title: str = "Internal error"

    def __init__(self, message: str | None = None, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message or self.title)
        self.message = message or self.title
        self.extra = extra or {}

    def to_job_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


# --- request errors (4xx at the door) -------------------------------------------------------
class InvalidRequest(CaptionqError):
    code = "invalid_request"
    http_status = 422
    title = "Invalid request"

    def __init__(
        self, message: str | None = None, *, errors: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, extra=extra)
        self.errors = errors or []
        # The problem's code: the first specific code among the field errors (e.g. a bad URL is
        # ``url_not_allowed``, an oversize metadata object ``metadata_too_large``).
        if type(self).code == "invalid_request":
            for e in self.errors:
                c = e.get("code")
                if isinstance(c, str) and c and c != "invalid_request":
                    self.code = c
                    break


class Unauthorized(CaptionqError):
    code = "unauthorized"
    http_status = 401
    title = "Missing or invalid API key"


class Forbidden(CaptionqError):
    code = "forbidden"
    http_status = 403
    title = "Forbidden"


class InsufficientScope(Forbidden):
    code = "insufficient_scope"
    title = "The API key lacks the scope this request needs"


class QuotaExceeded(Forbidden):
    """The tenant used its monthly quota: no new work until the month ends or the plan grows."""

    code = "quota_exceeded"
    title = "Monthly quota exceeded"


class TooManyRequests(CaptionqError):
    """429. ``headers`` (``Retry-After``, ``RateLimit``, ``RateLimit-Policy``) go on the response."""

    code = "rate_limited"
    http_status = 429
    retryable = True
    title = "Too many requests"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None,
                 extra: dict[str, object] | None = None) -> None:
        super().__init__(message, extra=extra)
        self.headers = headers or {}


class TooManyJobsInFlight(TooManyRequests):
    code = "too_many_jobs_in_flight"
    title = "Too many jobs queued or running"


class NotFound(CaptionqError):
    code = "not_found"
    http_status = 404
    title = "Not found"


class Conflict(CaptionqError):
    code = "conflict"
    http_status = 409
    title = "Conflict"


class JobFinished(Conflict):
    code = "job_finished"
    title = "The job has already finished"


class IdempotencyInFlight(Conflict):
    code = "idempotency_in_flight"
    title = "A request with this Idempotency-Key is still being processed"


class IdempotencyKeyReused(InvalidRequest):
    code = "idempotency_key_reused"
    title = "Idempotency-Key reused with a different body"


class PayloadTooLarge(CaptionqError):
    code = "payload_too_large"
    http_status = 413
    title = "Request body too large"


class UrlNotAllowed(InvalidRequest):
    code = "url_not_allowed"
    title = "URL not allowed"


class InvalidCursor(InvalidRequest):
    code = "invalid_cursor"
    title = "Invalid pagination cursor"


class InvalidJson(CaptionqError):
    code = "invalid_json"
    http_status = 400
    title = "The request body is not valid JSON"


class JsonTooDeep(InvalidRequest):
    code = "json_too_deep"
    title = "JSON nested too deeply"


class UnsupportedCharacter(InvalidRequest):
    code = "unsupported_character"
    title = "A string holds a character that cannot be stored"


class MetadataTooLarge(InvalidRequest):
    code = "metadata_too_large"
    title = "Metadata too large"


class DuplicateCustomId(InvalidRequest):
    code = "duplicate_custom_id"
    title = "custom_id used twice in one batch"


class UnsupportedContentType(CaptionqError):
    code = "unsupported_content_type"
    http_status = 415
    title = "Request bodies must be application/json"


class MethodNotAllowed(CaptionqError):
    code = "method_not_allowed"
    http_status = 405
    title = "Method not allowed"


class BatchFinished(Conflict):
    code = "batch_finished"
    title = "The batch has already finished"


class ServiceUnavailable(CaptionqError):
    code = "unavailable"
    http_status = 503
    retryable = True
    title = "Service temporarily unavailable"


# --- job errors (a job ends with one of these codes) ----------------------------------------
class MediaNotFound(CaptionqError):
    code = "media_not_found"
    http_status = 422
    title = "Media not found"


class StorageCredentialsMissing(CaptionqError):
    """The service itself has no credentials for its object store: an operator's setting."""

    code = "storage_credentials_missing"
    http_status = 500
    title = "The service has no storage credentials"


class MediaUnreadable(CaptionqError):
    code = "media_unreadable"
    http_status = 422
    title = "Media could not be decoded"


class MediaTooLarge(CaptionqError):
    code = "media_too_large"
    http_status = 413
    title = "Media too large"


class UnsupportedMedia(CaptionqError):
    code = "unsupported_media"
    http_status = 415
    title = "Unsupported media type"


class ContextTooLong(CaptionqError):
    code = "context_too_long"
    http_status = 422
    title = "Prompt does not fit the model's context"


class JobTimeout(CaptionqError):
    code = "timeout"
    http_status = 504
    title = "The job ran past its time limit"


class WorkerLost(CaptionqError):
    code = "worker_lost"
    title = "The worker running the job was lost too many times"


class Expired(CaptionqError):
    code = "expired"
    http_status = 410
    title = "The job was not started before its TTL"


class BatchExpired(CaptionqError):
    code = "batch_expired"
    http_status = 410
    title = "The batch's completion window ended before the job started"


class TransientError(CaptionqError):
    code = "transient"
    http_status = 503
    retryable = True
    title = "Transient failure"


class InternalError(CaptionqError):
    code = "internal"
    title = "Internal error"


_BY_CODE: dict[str, type[CaptionqError]] = {}


def _register(cls: type[CaptionqError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


_register(CaptionqError)


def as_captionq_error(exc: BaseException) -> CaptionqError:
    """Adopt any exception as one of ours, keeping a foreign ``code``/``retryable`` if present.

    ``models`` and ``storage`` raise exceptions that carry both ``code`` and ``retryable``; only
    those codes are adopted. Libraries use ``code`` for their own ids (SQLAlchemy's ``e3q8``, a
    link to its documentation), so an exception without ``retryable`` becomes ``internal``.
    """
    if isinstance(exc, CaptionqError):
        return exc
    code = getattr(exc, "code", None)
    retryable = getattr(exc, "retryable", None)
    if isinstance(code, str) and code and isinstance(retryable, bool):
        cls = _BY_CODE.get(code)
        if cls is None:
            cls = type(
                f"Adopted_{code}",
                (TransientError if retryable else InternalError,),
                {"code": code, "retryable": retryable},
            )
        err = cls(str(exc))
        err.__cause__ = exc
        return err
    err = InternalError(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
