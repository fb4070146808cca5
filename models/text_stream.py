"""Streaming and cancellation hooks, made safe for the engine thread: a listener that raises or
a cancel check that fails must never break the batch it runs in."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from models.tokenizer import Tokenizer

log = logging.getLogger(__name__)


#: ends of a decoded text that InternLM2's clean-up can still rewrite once more ids follow
#: (" n" + "'t" -> "n't", " '" + "s" -> "'s", ...): held back until they are settled
_CLEANUP_TAIL = re.compile(r" (?:n'?|'[vr]?)$")


def visible_text(decoded: str, stop_str: str, cleans_up: bool = False) -> str | None:
    """What a stream may show of ``decoded`` (the official decode of the ids so far): cut at the
    stop string and left-stripped like chat()'s answer, without the end that may still change
    (trailing whitespace, which the final strip may drop; a clean-up tail). None while the text
    ends in U+FFFD (an incomplete UTF-8 sequence)."""
    text = decoded.split(stop_str)[0].lstrip()
    if text.endswith("\ufffd"):
        return None
    text = text.rstrip()
    if cleans_up:
        text = _CLEANUP_TAIL.sub("", text).rstrip()
    return text


class TextStream:
    """Turns token ids into text deltas for ``on_token``: after each id, the new part of
    :func:`visible_text` of the decode of all ids so far. The deltas concatenate to exactly the
    final answer once :meth:`finish` has flushed what was held back."""

    def __init__(self, tok: Tokenizer, stop_str: str, callback: Callable[[str], None]) -> None:
        self.tok, self.stop_str, self.callback = tok, stop_str, callback
        self.ids: list[int] = []
        self.sent = ""
        self.cleans_up = tok.cleans_up_spaces

    def __call__(self, token_id: int) -> None:
        self.ids.append(token_id)
        text = visible_text(self.tok.decode(self.ids), self.stop_str, self.cleans_up)
        if text is None or not text.startswith(self.sent) or len(text) == len(self.sent):
            return
        self._emit(text)

    def finish(self, final_text: str) -> None:
        """Flush what was held back once the final text is known."""
        if final_text.startswith(self.sent) and len(final_text) > len(self.sent):
            self._emit(final_text)
        elif not final_text.startswith(self.sent):
            log.warning("streamed text is not a prefix of the final answer; stream left incomplete")

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
