"""Errors raised by the engine. ``models`` imports nothing else of captionq, so these carry the
same ``code`` / ``retryable`` attributes as ``core.errors`` and are adopted there by code."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose. ``code`` is stable and public."""

    code = "internal"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- checkpoints ------------------------------------------------------------------------------
class CheckpointNotFound(EngineError):
    code = "checkpoint_not_found"


class CheckpointCorrupt(EngineError):
    code = "checkpoint_corrupt"


class DownloadRefused(EngineError):
    """A hub model that is not cached could not be downloaded: ``HF_HUB_OFFLINE`` is set or the
    hub is unreachable. The message is one line saying which and what to do."""

    code = "download_refused"


class UnsupportedArchitecture(EngineError):
    code = "unsupported_architecture"


class UnknownTemplate(EngineError):
    code = "unknown_template"


# --- inputs -------------------------------------------------------------------------------
class MediaUnreadable(EngineError):
    """Bytes that are not a decodable image or video (truncated, corrupt, zero frames...)."""

    code = "media_unreadable"


class UnsupportedMedia(EngineError):
    code = "unsupported_media"


class MediaTooLarge(EngineError):
    """Too many pixels (Pillow's decompression-bomb limit) or frames."""

    code = "media_too_large"


class ContextTooLong(EngineError):
    code = "context_too_long"


class InvalidInput(EngineError):
    """A request the engine cannot run as given (bad parameters, mismatched tile counts...)."""

    code = "invalid_request"


# --- running --------------------------------------------------------------------------------
class Cancelled(EngineError):
    code = "canceled"


class OutOfMemory(EngineError):
    code = "out_of_memory"
    retryable = True
