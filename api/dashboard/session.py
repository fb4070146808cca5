"""The dashboard's session cookie: the API key the user signed in with, signed and time-limited.

The cookie is ``HttpOnly`` (page scripts never see the key), ``SameSite=Lax`` and ``Secure``
over https, scoped to ``/dashboard``. Its value is ``base64url(json) "." base64url(hmac)``
with HMAC-SHA256 under the session secret, so a changed or expired cookie is refused before any
lookup; the key itself is checked on every request like a Bearer key (a revoked key ends the
session within the authenticator's cache time). The key never appears in a URL.

Forms that change something (cancel, redeliver, sign out) also carry a CSRF token derived from
the cookie (``X-CSRF-Token`` header or ``csrf`` form field), so another site cannot post them
with the user's cookie.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

COOKIE = "captionq_session"
COOKIE_PATH = "/dashboard"
SECRET_FILE = "dashboard-session.key"

log = logging.getLogger(__name__)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """The configured secret, else one kept in ``data_dir`` (created once, mode 0600, by
    whichever API process gets there first; the others read it). Where ``data_dir`` cannot be
    written the process makes up its own: the API still serves, but a session then works only
    with the process that issued it (the log says so)."""
    if configured:
        return configured.encode()
    path = Path(data_dir) / SECRET_FILE
    try:
        return _shared_secret(path)
    except OSError as exc:
        log.warning("dashboard sessions: cannot keep a secret in %s (%s); set CAPTIONQ_SESSION_SECRET "
                    "so that every API process accepts every session", path, exc)
        return secrets.token_urlsafe(32).encode()


def _shared_secret(path: Path) -> bytes:
    """Written whole to a temporary file, then linked into place: a reader never sees a partial
    secret, and of two processes starting together one link wins and both use its secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
            with contextlib.suppress(FileExistsError):  # another process linked its own first
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    text = path.read_text().strip()
    if not text:
        raise OSError(f"{path} is empty")
    return text.encode()


@dataclass(frozen=True)
class Session:
    api_key: str
    expires_at: float


class SessionCodec:
    def __init__(self, secret: bytes, lifetime_seconds: float) -> None:
        self._secret = secret
        self.lifetime = lifetime_seconds

    def _mac(self, purpose: bytes, payload: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\0" + payload, hashlib.sha256).digest()

    def encode(self, api_key: str, now: float | None = None) -> str:
        expires = (time.time() if now is None else now) + self.lifetime
        payload = json.dumps({"k": api_key, "e": int(expires)}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(b'session', payload))}"

    def decode(self, value: str | None, now: float | None = None) -> Session | None:
        """The session, or None for a missing, tampered, malformed or expired cookie."""
        if not value or len(value) > 1024 or "." not in value:
            return None
        body, _, mac = value.partition(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except ValueError:
            return None
        if not hmac.compare_digest(given, self._mac(b"session", payload)):
            return None
        try:
            data = json.loads(payload)
            key, expires = str(data["k"]), float(data["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires <= (time.time() if now is None else now):
            return None
        return Session(key, expires)

    def csrf_token(self, cookie_value: str) -> str:
        return _b64(self._mac(b"csrf", cookie_value.encode()))

    def check_csrf(self, cookie_value: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(cookie_value))
