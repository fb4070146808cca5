"""The values that cross the engine's boundary: what a caller asks (:class:`ChatRequest`), what it
gets back (:class:`ChatResult`), a validated request (:class:`Prepared`) and what a loaded engine
is (:class:`EngineInfo`). Shapes: see :mod:`models.engine`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from models.generation import FinishReason, GenerationParams


@dataclass(frozen=True)
class EngineInfo:
    name: str
    template: str
    max_context: int  # max_position_embeddings of the LLM (the budget limit)
    image_size: int
    num_image_token: int  # LLM tokens per tile
    max_dynamic_patch: int
    use_thumbnail: bool
    dtype: str
    device: str
    attn_implementation: str
    quantization: str
    llm_family: str
    vocab_size: int
    #: the prompt + max_new_tokens limit enforced (None: none). The model's context, except for
    #: dynamic-NTK rope (InternLM2), which extends past it; then only the operator's cap
    context_limit: int | None = None


@dataclass
class ChatRequest:
    """One chat() call. ``question``/``history`` exactly as ``chat()`` takes them; the prompts
    module adds labels/prefixes. ``mode='batch_chat'`` applies batch_chat()'s prefix rule."""

    question: str
    history: Sequence[tuple[str, str]] | None = None
    pixel_values: torch.Tensor | None = None
    num_patches_list: Sequence[int] | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    on_token: Callable[[str], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    system_message: str | None = None
    mode: Literal["chat", "batch_chat"] = "chat"
    #: requests with the same key carry the same ``pixel_values`` (one job's media, laid out
    #: once): the ViT runs for the first of them and the others reuse its features
    #: (:mod:`models.vision_cache`); the key's owner releases it when done. None: no reuse
    vision_key: str | None = None


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: FinishReason
    output_ids: list[int]
    history: list[tuple[str, str]] = field(default_factory=list)
    # structured output (models.constrained): the parsed answer when a JSON format was asked and
    # the grammar finished (has_json), and per-token log-probabilities when asked
    has_json: bool = False
    json: Any = None
    logprobs: list[dict[str, Any]] | None = None
    #: tiles the ViT encoded for this request (0: its features were reused)
    vision_tiles: int = 0


@dataclass
class Prepared:
    """A validated request: its token ids and tiles (``tiles_used`` get an embedding)."""

    request: ChatRequest
    question: str  # after the automatic prefix: what goes into the history
    input_ids: list[int]
    num_context_tokens: int
    vision_tiles: int = 0  # set when its inputs are built (Engine.build_inputs)

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)
