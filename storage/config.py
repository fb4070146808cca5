"""The storage configuration: a small frozen value, built once by callers from ``Settings``.

``storage`` does not import ``core``; :meth:`StorageConfig.from_settings` reads the attributes it
needs from any object (duck typing), so ``core.settings.Settings`` works as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclass(frozen=True)
class StorageConfig:
    # --- S3 ------------------------------------------------------------------------------
    s3_endpoint_url: str | None = None  # None: AWS itself
    s3_region: str | None = None
    allowed_buckets: tuple[str, ...] = ()  # empty: any bucket
    # Explicit credentials; None means boto3's usual chain (AWS_* variables, profiles, roles).
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_session_token: str | None = field(default=None, repr=False)
    # --- local files ---------------------------------------------------------------------
    media_root: Path = Path("./media")
    local_files_allowed: bool = False
    # --- http(s) ---------------------------------------------------------------------------
    allow_private_urls: bool = False
    max_redirects: int = 5  # media fetches follow this many, re-checking every hop
    # --- limits ----------------------------------------------------------------------------
    max_bytes: int = 200 * MiB
    max_data_uri_bytes: int = 20 * MiB
    max_line_bytes: int = 32 * MiB  # one manifest line (one JobRequest)
    spool_bytes: int = 32 * MiB  # bodies above this go to a temporary file, not memory
    multipart_part_size: int = 8 * MiB  # S3 needs >= 5 MiB for every part but the last
    # --- timeouts (seconds) and retries ----------------------------------------------------
    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # longest silence while reading
    total_timeout: float = 600.0  # wall clock for one attempt's body (slow-drip guard)
    retries: int = 3  # extra attempts after the first, for transient failures only
    retry_backoff: float = 0.5  # first delay; doubles, capped, full jitter
    retry_backoff_max: float = 10.0

    def __post_init__(self) -> None:
        # Normalise what callers may pass as lists / strings so the value stays hashable.
        object.__setattr__(self, "allowed_buckets", tuple(self.allowed_buckets))
        object.__setattr__(self, "media_root", Path(self.media_root))
        if self.multipart_part_size < 5 * MiB:
            raise ValueError("multipart_part_size must be at least 5 MiB (an S3 rule)")
        for name in ("max_bytes", "max_data_uri_bytes", "max_line_bytes", "spool_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.retries < 0 or self.max_redirects < 0:
            raise ValueError("retries and max_redirects must be >= 0")

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> StorageConfig:
        """Build from ``core.settings.Settings`` (or anything with the same attribute names).

        Missing attributes keep the defaults above; ``overrides`` win over both.
        """
        d = cls()
        fetch_timeout = float(getattr(settings, "fetch_timeout_seconds", d.read_timeout))
        values: dict[str, Any] = {
            "s3_endpoint_url": getattr(settings, "s3_endpoint_url", d.s3_endpoint_url) or None,
            "s3_region": getattr(settings, "s3_region", d.s3_region) or None,
            "allowed_buckets": tuple(getattr(settings, "s3_allowed_buckets", d.allowed_buckets) or ()),
            "media_root": Path(getattr(settings, "media_root", d.media_root)),
            "local_files_allowed": bool(getattr(settings, "local_mode", d.local_files_allowed)),
            "allow_private_urls": bool(getattr(settings, "allow_private_urls", d.allow_private_urls)),
            "max_bytes": int(getattr(settings, "max_media_bytes", d.max_bytes)),
            "max_data_uri_bytes": int(getattr(settings, "max_data_uri_bytes", d.max_data_uri_bytes)),
            "max_line_bytes": int(getattr(settings, "max_request_bytes", d.max_line_bytes)),
            "read_timeout": fetch_timeout,
            "connect_timeout": min(d.connect_timeout, fetch_timeout),
        }
        values.update(overrides)
        return cls(**values)
