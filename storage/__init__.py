"""captionq storage: media and result objects (S3, http(s) behind address checks, data:, local
files). Knows nothing about jobs and imports nothing else of captionq.

Entry points: :func:`parse_media_url` (judge a URL at the door), :func:`open_media` (fetch one
item in the worker), :func:`put_object` / :func:`iter_lines` (results and manifests) and
:func:`safe_request` (guarded outbound HTTP, e.g. webhooks).
"""

from storage.addresses import address_problem, check_host, parse_ip_host
from storage.blob import MediaBlob
from storage.config import StorageConfig
from storage.errors import (
    InvalidManifest,
    MediaNotFound,
    MediaTooLarge,
    MediaUnreadable,
    StorageCredentialsMissing,
    StorageError,
    TransientError,
    UnsupportedMedia,
    UrlNotAllowed,
)
from storage.fetch import open_media
from storage.netguard import SafeResponse, guarded_client, open_stream, safe_request
from storage.objects import StoredObject, iter_lines, put_object, split_lines
from storage.sniff import Sniffed, sniff
from storage.urls import (
    DataUrl,
    FileUrl,
    HttpUrl,
    MediaUrl,
    S3Url,
    parse_http_url,
    parse_media_url,
    parse_object_url,
    parse_s3_url,
    parse_webhook_url,
)

__all__ = [
    "DataUrl", "FileUrl", "HttpUrl", "InvalidManifest", "MediaBlob", "MediaNotFound", "MediaTooLarge",
    "MediaUnreadable", "MediaUrl", "S3Url", "SafeResponse", "Sniffed", "StorageConfig",
    "StorageCredentialsMissing", "StorageError",
    "StoredObject", "TransientError", "UnsupportedMedia", "UrlNotAllowed", "address_problem",
    "check_host", "guarded_client", "iter_lines", "open_media", "open_stream", "parse_http_url",
    "parse_ip_host", "parse_media_url", "parse_object_url", "parse_s3_url", "parse_webhook_url",
    "put_object", "safe_request", "sniff", "split_lines",
]
