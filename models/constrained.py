"""Grammar-constrained decoding, stop strings and log-probabilities: the glue between a request's
``GenerationParams`` and the decoding loop of :mod:`models.generation`.

- :class:`GrammarConstraint` wraps one llguidance ``LLMatcher`` per row (docs/STRUCTURED_OUTPUT.md
  has why llguidance). After each accepted token it computes the next token mask on a background
  thread (llguidance releases the GIL), so the mask is ready when the model's next forward
  pass is: off the critical path on a multi-core CPU or a GPU.
- The grammar's vocabulary (:class:`GrammarVocab`) is the checkpoint tokenizer's byte table
  (:mod:`models.grammar_vocab`), built once per tokenizer; the template's stop token is the
  grammar's end token, so a finished grammar ends the row with ``finish_reason='stop'`` and a
  grammar cut short by ``max_new_tokens`` ends with ``'length'``.
- :class:`RowExtras` holds what one request adds to its row and turns the finished row into the
  result's text, ``json`` and ``logprobs``. A constrained row's text is exactly the bytes the
  grammar accepted (the concatenated token bytes), so ``text`` and ``json`` always agree; a
  JSON value is given only when the row ended on its stop token and the text parses.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from models.errors import InvalidInput
from models.generation import GenerationParams, Row
from models.grammar_vocab import TokenBytes, token_bytes
from models.tokenizer import Tokenizer

if TYPE_CHECKING:
    import llguidance


def _llguidance() -> Any:
    """The llguidance module, imported on first use: an engine whose requests never ask for a
    structured output never loads it (a 7.5 MB native library)."""
    import llguidance
    import llguidance.numpy  # fill_next_token_bitmask lives in the submodule

    return llguidance


# One thread: masks of a batch's rows are computed one after the other while the engine thread
# runs the model (on a 2-core CPU the other core; more threads would compete with torch's).
_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captionq-grammar")


def check_grammar(grammar: str) -> None:
    """Raises InvalidInput when llguidance cannot use ``grammar``."""
    problem = _llguidance().LLMatcher.validate_grammar(grammar)
    if problem:
        raise InvalidInput(f"response_format cannot be used: {problem.strip()}")


class _Wrapper:
    """What ``llguidance.TokenizerWrapper`` reads from a tokenizer."""

    def __init__(self, tok: Tokenizer, table: TokenBytes, stop_id: int) -> None:
        self.eos_token_id = stop_id
        self.bos_token_id = tok.bos_id
        self.tokens = table.pieces
        self.special_token_ids = sorted(table.special)
        self._tok = tok

    def __call__(self, text: str) -> list[int]:
        """Ids whose bytes are exactly ``text`` (llguidance tokenizes forced text with this).
        The checkpoint's encoding when it round-trips; sentencepiece adds a dummy-prefix space
        at the start, and then a greedy longest match over the byte table is used instead."""
        ids = self._tok.encode(text, add_special_tokens=False)
        want = text.encode("utf-8")
        if b"".join(self.tokens[t] if 0 <= t < len(self.tokens) else b"\0" for t in ids) == want:
            return ids
        return self._greedy(want)

    def _greedy(self, data: bytes) -> list[int]:
        if not hasattr(self, "_by_bytes"):
            self._by_bytes: dict[bytes, int] = {}
            for tid, piece in enumerate(self.tokens):
                if piece:
                    self._by_bytes.setdefault(piece, tid)
            self._longest = max(len(p) for p in self._by_bytes)
        out, i = [], 0
        while i < len(data):
            for n in range(min(self._longest, len(data) - i), 0, -1):
                hit = self._by_bytes.get(data[i:i + n])
                if hit is not None:
                    out.append(hit)
                    i += n
                    break
            else:  # a byte no token covers (no byte fallback): leave the rest to the grammar
                break
        return out


class GrammarVocab:
    """llguidance's tokenizer for one engine tokenizer and stop token (about 1 s to build for
    150k ids: built once, on first use)."""

    def __init__(self, tok: Tokenizer, stop_id: int) -> None:
        self.table = token_bytes(tok)
        self.stop_id = stop_id
        ll = _llguidance()
        self.lltok = ll.LLTokenizer(ll.TokenizerWrapper(_Wrapper(tok, self.table, stop_id)))
        self.words = (len(self.table.pieces) + 31) // 32

    def text_of(self, ids: list[int]) -> str:
        """The bytes the grammar saw for ``ids`` (special ids, the stop token included, add none)."""
        return b"".join(self.table.pieces[t] for t in ids if 0 <= t < len(self.table.pieces)).decode(
            "utf-8", errors="replace")


_VOCABS: weakref.WeakKeyDictionary[Tokenizer, dict[int, GrammarVocab]] = weakref.WeakKeyDictionary()
_VOCABS_LOCK = threading.Lock()


def vocab_for(tok: Tokenizer, stop_id: int) -> GrammarVocab:
    with _VOCABS_LOCK:
        per_stop = _VOCABS.setdefault(tok, {})
        if stop_id not in per_stop:
            per_stop[stop_id] = GrammarVocab(tok, stop_id)
        return per_stop[stop_id]


class GrammarConstraint:
    """One row's grammar state; implements ``models.generation.TokenConstraint``."""

    def __init__(self, vocab: GrammarVocab, grammar: str) -> None:
        self.vocab = vocab
        self.matcher: llguidance.LLMatcher = _llguidance().LLMatcher(vocab.lltok, grammar, log_level=0)
        self._bits = np.zeros((1, vocab.words), dtype=np.int32)
        self.mask_seconds = 0.0  # time spent computing masks (for benchmarks)
        self.wait_seconds = 0.0  # time the decoding loop waited for a mask
        self._pending: Future[None] = _POOL.submit(self._fill)

    def _fill(self) -> None:
        t0 = time.perf_counter()
        if self.matcher.is_error():  # cannot happen for a grammar that passed check_grammar
            self._bits[:] = 0  # only the stop token
            stop = self.vocab.stop_id
            self._bits.view(np.uint32)[0, stop // 32] = np.uint32(1 << (stop % 32))
        else:
            _llguidance().numpy.fill_next_token_bitmask(self.matcher, self._bits, 0)
        self.mask_seconds += time.perf_counter() - t0

    def mask_bits(self) -> np.ndarray:
        t0 = time.perf_counter()
        self._pending.result()
        self.wait_seconds += time.perf_counter() - t0
        return self._bits[0]

    def advance(self, token_id: int) -> None:
        self.matcher.consume_token(token_id)
        self._pending = _POOL.submit(self._fill)

    @property
    def failed(self) -> bool:
        return bool(self.matcher.is_error())


def stop_text_check(tok: Tokenizer, stops: tuple[str, ...]) -> Callable[[list[int]], bool]:
    """True once the decoded text of the ids ends in (contains, near its end) a stop string.
    Only a window of the last ids is decoded: a stop string of n UTF-8 bytes spans at most n
    tokens, plus one that may start inside a multi-byte character."""
    window = max(len(s.encode("utf-8")) for s in stops) + 2

    def check(ids: list[int]) -> bool:
        tail = tok.decode(ids[-window:])
        return any(s in tail for s in stops)

    return check


def cut_at_stops(text: str, stops: tuple[str, ...]) -> str:
    """``text`` up to (without) the first stop string in it."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


@dataclass
class Finished:
    text: str
    has_json: bool = False
    json_value: Any = None
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class RowExtras:
    """What one request's params add to its :class:`Row`; see the module doc."""

    tok: Tokenizer
    params: GenerationParams
    vocab: GrammarVocab | None = None
    constraint: GrammarConstraint | None = None
    stop_text: Callable[[list[int]], bool] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, tok: Tokenizer, stop_id: int, params: GenerationParams) -> RowExtras:
        extras = cls(tok, params)
        if params.grammar is not None:
            extras.vocab = vocab_for(tok, stop_id)
            extras.constraint = GrammarConstraint(extras.vocab, params.grammar)
        if params.stop:
            extras.stop_text = stop_text_check(tok, params.stop)
        extras.kwargs = {"constraint": extras.constraint, "stop_text": extras.stop_text}
        return extras

    @property
    def streams_live(self) -> bool:
        """Whether text can stream token by token: not when a stop string may still cut it or
        the text is the grammar's bytes (then it comes in one piece at the end)."""
        return self.constraint is None and not self.params.stop

    def finish(self, row: Row, text: str) -> Finished:
        """The result of a finished row whose ordinary answer (clean_response) is ``text``."""
        out = Finished(text)
        if self.vocab is not None:
            out.text = self.vocab.text_of(row.ids)
            if self.params.json_output:
                out.text = out.text.strip()
        if self.params.stop:
            out.text = cut_at_stops(out.text, self.params.stop)
            if self.vocab is None:
                out.text = out.text.strip()
        if self.params.json_output and row.finish_reason == "stop" and not (
                self.constraint is not None and self.constraint.failed):
            with contextlib.suppress(ValueError):
                out.json_value, out.has_json = json.loads(out.text), True
        if self.params.logprobs:
            out.logprobs = [self._logprob_json(lp.id, lp.logprob, lp.top) for lp in row.logprobs]
        return out

    def _logprob_json(self, tid: int, logprob: float, top: list[tuple[int, float]]) -> dict[str, Any]:
        entry: dict[str, Any] = {"token": self.tok.decode([tid], skip_special_tokens=False), "id": tid,
                                 "logprob": logprob}
        if self.params.top_logprobs:
            entry["top_logprobs"] = [{"token": self.tok.decode([t], skip_special_tokens=False), "id": t,
                                      "logprob": v} for t, v in top]
        return entry


__all__ = ["Finished", "GrammarConstraint", "GrammarVocab", "RowExtras", "check_grammar", "cut_at_stops",
           "stop_text_check", "vocab_for"]
