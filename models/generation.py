"""Token generation over a left-padded batch with per-row settings, stops and cancellation.

This is a small decoding loop of our own around the model's forward pass (KV cache, left padding
through the attention mask, positions = cumsum(mask) - 1, like transformers' ``generate`` and
the original InternLM2 remote code). It exists instead of ``model.generate`` because each row
needs its own sampling settings and seed (a request's output must not depend on its batch
neighbours), its own stop, a per-token hook and a cancellation check between steps; finished and
canceled rows are dropped from the batch (and its KV cache) as soon as they end.

Like the original ``InternVLChatModel.generate``, generation is driven by ``inputs_embeds``: the
repetition penalty therefore only sees generated tokens, not the prompt.

Logits processing order follows transformers: repetition penalty, then (sampling only)
temperature, top-k, top-p, then argmax (greedy) or a draw from the row's own
``torch.Generator`` (seeded from ``GenerationParams.seed``, or at random).

Structured output (:mod:`models.constrained`): a row's ``constraint`` lowers the logits of every
token its grammar does not allow next by 1e30 before the logits processing above, in that row
only (a free row's logits are never touched, so its tokens do not depend on constrained
neighbours). The constraint computes the next mask in a background thread while the model runs
the next forward pass. ``stop_text`` ends a row when its decoded text reaches a stop string.
``logprobs`` records, per generated token, the log-softmax of the model's raw logits (before
sampling settings and constraints) of the chosen token and the ``top_logprobs`` best.

Shapes: ``inputs_embeds`` float [B, L, H] (model dtype), ``attention_mask`` int64 [B, L]
(0 = left padding).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from models.errors import InvalidInput

FinishReason = Literal["stop", "length", "canceled"]


@dataclass(frozen=True)
class GenerationParams:
    """Per-request generation settings (``do_sample=False`` = greedy; then temperature/top_p/
    top_k/seed are ignored, as in transformers). ``top_k=0`` and ``top_p=1.0`` disable them."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    grammar: str | None = None  # llguidance grammar (jobs.formats.grammar_for); None = free text
    json_output: bool = False  # the grammar is a JSON one: the result carries the parsed value
    stop: tuple[str, ...] = ()  # stop strings, checked on the decoded text, not in the output
    logprobs: bool = False
    top_logprobs: int = 0

    def validate(self) -> GenerationParams:
        if not 1 <= self.max_new_tokens <= 1_000_000:
            raise InvalidInput(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise InvalidInput(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidInput(f"top_k must be >= 0, got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise InvalidInput(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not 0 <= self.top_logprobs <= 20:
            raise InvalidInput(f"top_logprobs must be in [0, 20], got {self.top_logprobs}")
        if any(not s for s in self.stop):
            raise InvalidInput("stop strings must not be empty")
        if self.grammar is not None:
            from models.constrained import check_grammar

            check_grammar(self.grammar)
        return self


class TokenConstraint(Protocol):
    """A row's grammar state (models.constrained.GrammarConstraint)."""

    def mask_bits(self) -> np.ndarray:
        """int32 words: bit (i % 32) of word i // 32 set = id i allowed next."""
        ...

    def advance(self, token_id: int) -> None:
        """Accept the chosen token (and start computing the next mask)."""
        ...


@dataclass(frozen=True)
class TokenLogprob:
    id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Row:
    """One sequence of the batch. ``on_step(token_id)`` runs after each token;
    ``should_cancel()`` runs before each decoding step."""

    params: GenerationParams
    stop_ids: frozenset[int]
    on_step: Callable[[int], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    generator: torch.Generator | None = None
    constraint: TokenConstraint | None = None
    stop_text: Callable[[list[int]], bool] | None = None  # True once the text reached a stop string
    logprobs: list[TokenLogprob] = field(default_factory=list)


def _process(scores: torch.Tensor, row: Row) -> int:
    """Pick the next token for one row from its raw logits [V] (float32)."""
    p = row.params
    if p.repetition_penalty != 1.0 and row.ids:
        seen = torch.tensor(sorted(set(row.ids)), device=scores.device)
        picked = scores[seen]
        scores = scores.clone()
        scores[seen] = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
    if not p.do_sample:
        return int(torch.argmax(scores))
    scores = scores / p.temperature
    if 0 < p.top_k < scores.shape[-1]:
        kth = torch.topk(scores, p.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        remove = cum <= (1 - p.top_p)
        remove[-1] = False  # keep at least one token
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = scores.softmax(-1)
    if row.generator is None:
        row.generator = torch.Generator(device=scores.device)
        row.generator.manual_seed(p.seed if p.seed is not None else secrets.randbits(62))
    return int(torch.multinomial(probs, 1, generator=row.generator))


def _plain_greedy(p: GenerationParams) -> bool:
    return not p.do_sample and p.repetition_penalty == 1.0


def next_tokens(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """The next token of each row from one step's raw logits [B, V] (float32, row b = rows[b]).

    Plain greedy rows (the default) share one batched argmax and one device-to-host copy per
    step: picking row by row costs a kernel launch and a wait for the device per row. The argmax
    of a row is the same either way (the first maximal index)."""
    plain = [_plain_greedy(row.params) for row in rows]
    batched: list[int] = logits.argmax(-1).tolist() if any(plain) else []
    return [batched[b] if plain[b] else _process(logits[b], row) for b, row in enumerate(rows)]


FORBIDDEN = 1e30  # subtracted from the logit of a token the grammar forbids


def apply_constraints(logits: torch.Tensor, rows: list[Row]) -> None:
    """Make the ids each constrained row's grammar forbids unpickable, in place: their logits drop
    by 1e30 (softmax gives them 0, argmax never picks them); allowed logits stay exactly as they
    are (+0). Adding a bias is branch-free, several times faster than ``masked_fill`` with an
    irregular mask on a 150k vocabulary. Ids past the grammar's vocabulary (padded embedding
    rows of a model) are forbidden too."""
    idx = [b for b, row in enumerate(rows) if row.constraint is not None]
    if not idx:
        return
    bits = np.stack([rows[b].constraint.mask_bits() for b in idx])  # type: ignore[union-attr]
    # one C pass from packed bits to one byte per id (bit i of word w = id 32 w + i)
    allowed = torch.from_numpy(np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little"))
    vocab = logits.shape[-1]
    if allowed.shape[1] < vocab:
        allowed = torch.cat([allowed, allowed.new_zeros(len(idx), vocab - allowed.shape[1])], dim=1)
    bias = allowed[:, :vocab].to(logits.device, logits.dtype).sub_(1).mul_(FORBIDDEN)
    if len(idx) == logits.shape[0]:
        logits.add_(bias)
    else:
        for k, b in enumerate(idx):
            logits[b].add_(bias[k])


def _logprobs(logits: torch.Tensor, rows: list[Row]) -> dict[int, torch.Tensor]:
    """Log-softmax of the raw logits of the rows that asked for logprobs, by batch index."""
    return {b: torch.log_softmax(logits[b], -1) for b, row in enumerate(rows) if row.params.logprobs}


def _record_logprob(row: Row, lp: torch.Tensor, tok: int) -> None:
    top: list[tuple[int, float]] = []
    if row.params.top_logprobs > 0:
        values, ids = torch.topk(lp, min(row.params.top_logprobs, lp.shape[-1]))
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    row.logprobs.append(TokenLogprob(tok, float(lp[tok]), top))


def take_step(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """One decoding step's bookkeeping for ``rows`` (row b = ``logits[b]``, raw float32 [B, V]):
    logprobs of the raw logits, grammar masks, the token pick, then per row the token appended,
    its hook called and ``finish_reason`` set when it stopped or reached its length. Returns the
    tokens picked. Shared by the static loop below and the continuous one (models.continuous)."""
    raw_lp = _logprobs(logits, rows)
    apply_constraints(logits, rows)
    tokens = next_tokens(logits, rows)
    for b, (tok, row) in enumerate(zip(tokens, rows, strict=True)):
        row.ids.append(tok)
        if b in raw_lp:
            _record_logprob(row, raw_lp[b], tok)
        if row.on_step is not None:
            row.on_step(tok)
        if tok in row.stop_ids or (row.stop_text is not None and row.stop_text(row.ids)):
            row.finish_reason = "stop"
        elif len(row.ids) >= row.params.max_new_tokens:
            row.finish_reason = "length"
        elif row.constraint is not None:
            row.constraint.advance(tok)  # the next mask is computed during the next forward
    return tokens


def prefill(model: Any, inputs_embeds: torch.Tensor, mask: torch.Tensor, capacity: int
            ) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """The prompt's forward pass over a reserved cache of ``capacity`` positions: float32 logits
    of each row's last position ``[B, V]``, the cache, and the positions (``cumsum(mask) - 1``,
    left padding at 0). The static loop below and ``Engine.prefill`` (continuous batching) share
    it, so a prompt's numbers are the same on both paths."""
    from models.kv_cache import reserved_cache

    cache = reserved_cache(model.config.get_text_config(), capacity)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions,
                cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :].float(), cache, positions


@torch.inference_mode()
def generate(model: Any, inputs_embeds: torch.Tensor | None, attention_mask: torch.Tensor, rows: list[Row], *,
             step_logits: list[torch.Tensor] | None = None,
             started: tuple[torch.Tensor, Any, torch.Tensor] | None = None) -> list[Row]:
    """Run ``rows`` to completion; returns them with ``ids`` and ``finish_reason`` set.

    ``step_logits`` (conformance only) collects each step's raw logits, float32 [B_active, V]
    (rows in their original order while none has finished). ``started``: the prompt was
    prefilled elsewhere (``Engine.prefill_after``): its (logits, cache with room for the answer,
    positions), and ``inputs_embeds`` is not used."""
    if started is None and (inputs_embeds is None or inputs_embeds.shape[0] != len(rows)):
        raise InvalidInput("one Row per batch row is required")
    most_new = max((row.params.max_new_tokens for row in rows), default=1)
    active = list(range(len(rows)))
    for i in active:
        rows[i].params.validate()
    if started is not None:
        logits, cache, positions = started
        mask = attention_mask.to(logits.device, torch.long)
    else:
        assert inputs_embeds is not None
        mask = attention_mask.to(inputs_embeds.device, torch.long)
        logits, cache, positions = prefill(model, inputs_embeds, mask, inputs_embeds.shape[1] + most_new)
    next_pos = positions[:, -1:] + 1
    while True:
        if step_logits is not None:
            step_logits.append(logits.detach().cpu().clone())
        tokens = take_step(logits, [rows[i] for i in active])
        for i in active:
            cancel = rows[i].should_cancel
            if rows[i].finish_reason is None and cancel is not None and cancel():
                rows[i].finish_reason = "canceled"
        keep = [b for b, i in enumerate(active) if rows[i].finish_reason is None]
        if not keep:
            return rows
        step_ids = torch.tensor(tokens, device=mask.device).unsqueeze(-1)
        if len(keep) < len(active):
            idx = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(idx)
            mask, next_pos, step_ids = mask[idx], next_pos[idx], step_ids[idx]
            active = [active[b] for b in keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=next_pos, cache=cache,
                    use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :].float()
        next_pos = next_pos + 1
