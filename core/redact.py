"""Secrets never reach the logs: API keys, webhook signing secrets, bearer tokens, passwords in
URLs and signed query parameters (S3 pre-signed URLs, ``?token=``) are masked in every formatted
log line (:mod:`core.logging` applies :func:`redact` to the whole line, message, extra fields and
traceback alike).

The patterns are the formats captionq issues (``cq_key_<id>_<secret>``, ``whsec_<base64>``)
plus the usual places credentials travel in text; an API key keeps its key id (not secret, it
names the key to revoke).
"""

from __future__ import annotations

import re

MASK = "***"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # captionq API keys: cq_key_<16 hex>_<secret>; the key id stays readable
    (re.compile(r"\b(cq_key_[0-9a-f]{16}_)[A-Za-z0-9_\-]+"), r"\g<1>" + MASK),
    # webhook signing secrets (Standard Webhooks): whsec_<base64>
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), "whsec_" + MASK),
    # Authorization: Bearer <token> / Basic <credentials>
    (re.compile(r"\b(Bearer|Basic) [A-Za-z0-9._~+/=\-]{16,}"), r"\g<1> " + MASK),
    # user:password@ in URLs
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s:'\"]+:[^/@\s'\"]+@"), r"\g<1>" + MASK + "@"),
    # signed or secret query parameters and AWS SigV4 header parts
    (re.compile(r"(?i)([?&;](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig|token|"
                r"access_token|api_key|apikey|secret|password)=)[^&\s'\"#]+"), r"\g<1>" + MASK),
    (re.compile(r"(?i)\b(Signature=)[0-9a-f]{16,}"), r"\g<1>" + MASK),
    (re.compile(r"(?i)\b(Credential=)[A-Z0-9]{12,}/"), r"\g<1>" + MASK + "/"),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
