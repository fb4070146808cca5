"""Streaming and cancellation hooks, made safe for the engine thread: a listener that raises or
a cancel check that fails must never break the batch it runs in."""

from __future__ import annotations

import logging
from collections.abc import Callable

from models.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class TextStream:
    """Turns token ids into text deltas for ``on_token``: decodes everything so far, cuts at the
    stop string, left-strips, and holds back a trailing U+FFFD (an incomplete UTF-8 sequence)."""

    def __init__(self, tok: Tokenizer, stop_str: str, callback: Callable[[str], None]) -> None:
        self.tok, self.stop_str, self.callback = tok, stop_str, callback
        self.ids: list[int] = []
        self.sent = ""

    def __call__(self, token_id: int) -> None:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids).split(self.stop_str)[0].lstrip()
        if text.endswith("\ufffd") or not text.startswith(self.sent) or len(text) == len(self.sent):
            return
        self._emit(text)

    def finish(self, final_text: str) -> None:
        """Flush what was held back (a trailing U+FFFD) once the final text is known."""
        if final_text.startswith(self.sent) and len(final_text) > len(self.sent):
            self._emit(final_text)

    def _emit(self, text: str) -> None:
        delta, self.sent = text[len(self.sent):], text
        try:
            self.callback(delta)
        except Exception:  # a broken listener must not break the batch
            log.exception("on_token callback failed; streaming stopped for this request")
            self.callback = lambda _d: None


def safe_cancel(check: Callable[[], bool] | None) -> Callable[[], bool] | None:
    if check is None:
        return None

    def wrapped() -> bool:
        try:
            return bool(check())
        except Exception:
            log.exception("should_cancel check failed; treating the request as not canceled")
            return False

    return wrapped
