"""URL checks at submission, on top of ``storage.urls`` (the same parser the worker fetches with).

Host names are not resolved here by default (``settings.resolve_urls_at_submission``): literal
addresses and special names are refused at the door, and every connection the worker or the
webhook sender makes is checked again against the address it actually connects to
(``storage.netguard``), which also covers DNS rebinding.
"""

from __future__ import annotations

from core.settings import Settings
from storage.config import StorageConfig
from storage.urls import parse_media_url, parse_object_url, parse_webhook_url


class StorageUrlChecker:
    """Implements ``jobs.requests.UrlChecker``; errors carry storage's ``code``."""

    def __init__(self, settings: Settings) -> None:
        self.config = StorageConfig.from_settings(settings)
        self.resolve = settings.resolve_urls_at_submission

    def media(self, url: str, kind: str) -> str:
        return parse_media_url(url, self.config, kind=kind, resolve=self.resolve).url  # type: ignore[arg-type]

    def webhook(self, url: str) -> str:
        return parse_webhook_url(url, allow_private=self.config.allow_private_urls, resolve=self.resolve).url

    def manifest(self, url: str) -> str:
        return parse_object_url(url, self.config).url

    def output(self, url: str) -> str:
        return parse_object_url(url, self.config, prefix=True).url
