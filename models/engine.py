"""The InternVL2 engine: one loaded model + tokenizer + template, and batched chat generation.

Public API (what the worker uses, together with :class:`models.batcher.Batcher`)::

    engine = Engine.load(source: str | Path, *, device="auto", dtype="auto",
                         attn_implementation="auto", quantization="none",
                         cache_dir: Path | None = None, hub_cache_dir: Path | None = None,
                         allow_download=False, vision_chunk_tiles=64, name=None,
                         max_context_tokens=None, vision_cache_tiles=256) -> Engine
    engine.info -> EngineInfo          # name, template, max_context, image_size, num_image_token, ...
    engine.prepare(request) -> Prepared          # query, ids, validation, token budget
    engine.check_budget(request) -> int          # prompt tokens; raises ContextTooLong
    engine.generate_batch(requests) -> list[ChatResult]
    engine.chat(question, pixel_values=None, num_patches_list=None, history=None, params=...) -> ChatResult
    engine.batch_key(prepared) -> Hashable       # requests with different keys never share a batch

``source`` is a checkpoint folder or a hub id (resolved in huggingface_hub's cache; see
:mod:`models.checkpoint.source`). ``cache_dir`` keeps converted weights for a fast second start.

Shapes crossing module boundaries:
- ``ChatRequest.pixel_values``: float32 ``[tiles, 3, image_size, image_size]`` (448 for InternVL2),
  normalised as ``((u8/255) - mean) / std`` by :mod:`models.preprocess`, tiles of all images
  concatenated in order; ``num_patches_list`` = tiles per image (None = one image with all tiles,
  like ``chat()``).
- image features (``Engine.image_features``): ``[tiles, num_image_token, llm_hidden]`` in the model
  dtype, computed once per ``ChatRequest.vision_key`` while the key is cached
  (:mod:`models.vision_cache`; ``engine.vision_stats`` counts the ViT's passes and tiles);
  generation inputs: ``inputs_embeds [B, L, H]`` + ``attention_mask [B, L]`` (left padded).

Semantics follow the official ``chat()``: the query comes from :mod:`models.prompts` (automatic
``<image>`` prefix, ``<img><IMG_CONTEXT>...</img>`` expansion, history), the only stop token is
``template.sep.strip()`` (QUIRKS 6), the text is ``decode(skip_special_tokens)`` split at that
string and stripped (QUIRKS 7). ``output_ids`` include the stop token when the request stopped.

Streaming and cancellation: ``on_token(delta)`` is called on the engine thread with each new
piece of decoded text (held back while it ends in an incomplete UTF-8 sequence, in whitespace
or in a tail that clean-up may still rewrite: :func:`models.text_stream.visible_text`); the
deltas concatenate to exactly ``ChatResult.text``.
``should_cancel()`` is polled between decoding steps; a canceled request leaves the batch at once
and returns what it had with ``finish_reason='canceled'``. Rows may differ in every
``GenerationParams`` field (sampling, seed, max_new_tokens): they are applied per row.

Token budget rule (checked before any model work): ``prompt_tokens + max_new_tokens <=
max_position_embeddings`` of the LLM and ``<= max_context_tokens`` (the operator's cap, None =
none), else :class:`ContextTooLong`. InternLM2's dynamic-NTK rope extends past
``max_position_embeddings`` and the official code answers such prompts, so for it only the
operator's cap applies; a request that could pass ``max_position_embeddings`` runs alone
(``batch_key``): its rope then depends on no neighbour, and no neighbour's on it. Phi-3's
longrope requests that could pass the original 4k context run alone for the same reason.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from models import prompts
from models.chat_types import ChatRequest, ChatResult, EngineInfo, FinishReason, Prepared
from models.checkpoint import open_checkpoint, parse_spec
from models.checkpoint.loader import LoadStats, empty_model, load_weights
from models.checkpoint.placement import (
    device_lookup,
    needs_split,
    resolve_attention,
    resolve_device,
    resolve_dtype,
    split_device_map,
)
from models.checkpoint.quantize import check_quantization, quantize_llm_linears
from models.checkpoint.spec import ModelSpec
from models.constrained import RowExtras
from models.errors import ContextTooLong, EngineError, InvalidInput, OutOfMemory
from models.generation import GenerationParams, Row
from models.generation import generate as run_generation
from models.generation import prefill as run_prefill
from models.kv_cache import reserved_cache
from models.text_stream import TextStream, safe_cancel
from models.tokenizer import Tokenizer
from models.vision_cache import PrefixCache, VisionCache, VisionStats

log = logging.getLogger(__name__)

#: per layer, keys and values ``[B, kv_heads, positions, head_dim]``
KVLayers = list[tuple[torch.Tensor, torch.Tensor]]

_RESERVED = (prompts.IMG_CONTEXT_TOKEN, prompts.IMG_START_TOKEN, prompts.IMG_END_TOKEN)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch ran out of device memory (``OutOfMemoryError``), or an allocation failed on the
    host (a ``RuntimeError`` that says so)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class Engine:
    """See the module docstring. Not thread-safe: one thread (the batcher's) runs the model."""

    def __init__(self, model: Any, tokenizer: Tokenizer, spec: ModelSpec, info: EngineInfo, *,
                 vision_chunk_tiles: int = 64, load_stats: LoadStats | None = None,
                 max_context_tokens: int | None = None, vision_cache_tiles: int = 256,
                 prefix_cache_tokens: int = 16384) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.max_context_tokens = max_context_tokens
        self.info = dataclasses.replace(info, context_limit=self._context_limit())
        self.template = prompts.get_template(spec.template)
        self.stop_id = tokenizer.stop_id(self.template.stop_str)
        self.img_end_id = tokenizer.token_id(prompts.IMG_END_TOKEN)
        self.vision_chunk_tiles = max(1, int(vision_chunk_tiles))
        self.load_stats = load_stats
        self.vision_cache = VisionCache(vision_cache_tiles)
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self.prefix_reused_tokens = 0  # prompt tokens not prefilled again (prefill_after)
        self.vision_stats = VisionStats()
        self._lock = threading.Lock()

    # --- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path, *, device: str = "auto", dtype: str = "auto",
             attn_implementation: str = "auto", quantization: str = "none",
             cache_dir: Path | None = None, hub_cache_dir: Path | None = None,
             allow_download: bool = False, vision_chunk_tiles: int = 64,
             name: str | None = None, max_context_tokens: int | None = None,
             vision_cache_tiles: int = 256, prefix_cache_tokens: int = 16384) -> Engine:
        ckpt = open_checkpoint(source, hub_cache_dir=hub_cache_dir, allow_download=allow_download)
        spec = parse_spec(ckpt.config)
        template = prompts.get_template(spec.template)  # UnknownTemplate before any tensor is read
        tokenizer = Tokenizer.load(ckpt.path)
        tokenizer.stop_id(template.stop_str)
        dev = resolve_device(device)
        if dev != "split" and device == "auto":
            size = sum(p.stat().st_size for p in ckpt.shards)
            dev = "split" if needs_split(size, dev) else dev
        torch_dtype = resolve_dtype(dtype, "cpu" if dev == "cpu" else "cuda")
        check_quantization(quantization, dev)
        attn = resolve_attention(attn_implementation, dev, torch_dtype)
        device_map = split_device_map(spec.text_kwargs["num_hidden_layers"], torch.cuda.device_count()) \
            if dev == "split" else None
        load_dev = "cpu" if quantization != "none" else (dev if dev != "split" else "cuda:0")
        model = empty_model(spec.internvl_config(tokenizer.img_context_id))
        model.set_attn_implementation(attn)
        stats = load_weights(model, ckpt, spec, dtype=torch_dtype,
                             device_for=device_lookup(device_map, load_dev), cache_root=cache_dir)
        if quantization != "none":
            quantize_llm_linears(model, quantization, torch.device(dev), torch_dtype)
            model.to(dev)
        if device_map is not None:
            from accelerate import dispatch_model  # optional, multi-GPU only

            model = dispatch_model(model, device_map=device_map)
        model.eval()
        info = EngineInfo(
            name=name or ckpt.name, template=spec.template, max_context=spec.max_position_embeddings,
            image_size=spec.image_size, num_image_token=spec.num_image_token,
            max_dynamic_patch=spec.max_dynamic_patch, use_thumbnail=spec.use_thumbnail,
            dtype=str(torch_dtype).removeprefix("torch."), device=dev, attn_implementation=attn,
            quantization=quantization, llm_family=spec.llm_family, vocab_size=spec.vocab_size,
        )
        log.info("loaded %s (%s) on %s as %s, %s attention%s", info.name, spec.llm_family, dev,
                 info.dtype, attn, " from converted cache" if stats.from_cache else "")
        return cls(model, tokenizer, spec, info, vision_chunk_tiles=vision_chunk_tiles, load_stats=stats,
                   max_context_tokens=max_context_tokens, vision_cache_tiles=vision_cache_tiles,
                   prefix_cache_tokens=prefix_cache_tokens)

    # --- preparing --------------------------------------------------------------------------
    def prepare(self, request: ChatRequest) -> Prepared:
        """Validate a request and build its ids (no model work). Raises InvalidInput or
        ContextTooLong."""
        request.params.validate()
        for text in [request.question, *(s for pair in (request.history or []) for s in pair)]:
            if any(tok in text for tok in _RESERVED):
                raise InvalidInput("question or history contains a reserved image token (<img>, </img>, "
                                   "<IMG_CONTEXT>)")
        tiles = 0
        patches: list[int] = []
        pv = request.pixel_values
        if pv is not None:
            s = self.spec.image_size
            if pv.ndim != 4 or tuple(pv.shape[1:]) != (3, s, s) or not pv.is_floating_point():
                raise InvalidInput(f"pixel_values must be float [tiles, 3, {s}, {s}], got "
                                   f"{pv.dtype} {tuple(pv.shape)}")
            tiles = int(pv.shape[0])
            if tiles == 0:
                raise InvalidInput("pixel_values has no tiles")
            patches = [int(n) for n in request.num_patches_list] if request.num_patches_list else [tiles]
        elif request.num_patches_list:
            raise InvalidInput("num_patches_list given without pixel_values")
        query = prompts.build_query(
            self.template, request.question, request.history, patches,
            num_image_token=self.spec.num_image_token, system_message=request.system_message,
            auto_prefix=request.mode, num_tiles=tiles if pv is not None else None,
        )
        question = prompts.prepare_question(request.question, has_images=bool(patches),
                                            history=request.history, auto_prefix=request.mode)
        ids = self.tokenizer.encode(query)
        n_ctx = sum(1 for t in ids if t == self.tokenizer.img_context_id)
        if n_ctx > tiles * self.spec.num_image_token:
            raise InvalidInput(f"query has {n_ctx} image tokens but only {tiles} tile(s) were given")
        if pv is not None and n_ctx == 0:
            raise InvalidInput("pixel_values given but the query has no <image> placeholder left")
        prepared = Prepared(request=request, question=question, input_ids=ids, num_context_tokens=n_ctx)
        self._check_budget(prepared)
        return prepared

    @property
    def dynamic_ntk(self) -> bool:
        """InternLM2's rope: past ``max_position_embeddings`` it stretches (dynamic NTK) instead of
        failing, and the official code answers such prompts."""
        return self.spec.rope_type == "dynamic"

    def _context_limit(self) -> int | None:
        model = None if self.dynamic_ntk else self.spec.max_position_embeddings
        limits = [n for n in (model, self.max_context_tokens) if n is not None]
        return min(limits) if limits else None

    def _check_budget(self, p: Prepared) -> None:
        need = p.prompt_tokens + p.request.params.max_new_tokens
        limit = self.info.context_limit
        if limit is not None and need > limit:
            own = limit == self.spec.max_position_embeddings and not self.dynamic_ntk
            whose = "the model's context" if own else "the operator's limit (max_context_tokens)"
            raise ContextTooLong(
                f"prompt ({p.prompt_tokens} tokens) + max_new_tokens ({p.request.params.max_new_tokens}) "
                f"= {need} exceeds {whose} of {limit} tokens"
            )

    def check_budget(self, request: ChatRequest) -> int:
        """Prompt token count; raises ContextTooLong (or InvalidInput) before any model work."""
        return self.prepare(request).prompt_tokens

    def batch_key(self, p: Prepared) -> Hashable:
        """Requests whose rope behaviour could depend on a neighbour get a key of their own."""
        rope = self.spec.text_kwargs["rope_parameters"]
        total = p.prompt_tokens + p.request.params.max_new_tokens
        if rope.get("rope_type") == "longrope":
            if total > int(rope["original_max_position_embeddings"]):
                return ("alone", id(p))
        elif self.dynamic_ntk and total > self.spec.max_position_embeddings:
            # dynamic NTK rescales rope by the longest padded sequence of the batch: alone, the
            # row sees exactly the rope the official code gives it, and its neighbours keep theirs
            return ("alone", id(p))
        return "shared"

    # --- running ----------------------------------------------------------------------------
    @torch.inference_mode()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[tiles, 3, S, S]`` float32 -> ``[tiles, num_image_token, H]``, in chunks of
        ``vision_chunk_tiles`` tiles (bounds the ViT's activation memory)."""
        dev = self.model.model.vision_tower.embeddings.patch_embeddings.projection.weight.device
        self.vision_stats.passes += 1
        self.vision_stats.tiles += int(pixel_values.shape[0])
        chunks = []
        for start in range(0, pixel_values.shape[0], self.vision_chunk_tiles):
            part = pixel_values[start:start + self.vision_chunk_tiles].to(dev)
            chunks.append(self.model.model.get_image_features(pixel_values=part).pooler_output)
        return torch.cat(chunks)

    def generate_batch(self, requests: Sequence[ChatRequest | Prepared]) -> list[ChatResult]:
        """Run many independent requests: all their tiles through the ViT in chunks, then one
        left-padded generation per batch key. Results are in input order."""
        prepared = [r if isinstance(r, Prepared) else self.prepare(r) for r in requests]
        results: list[ChatResult | None] = [None] * len(prepared)
        groups: dict[Hashable, list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault(self.batch_key(p), []).append(i)
        with self._lock:
            for idxs in groups.values():
                for i, res in zip(idxs, self._run_group([prepared[i] for i in idxs]), strict=True):
                    results[i] = res
        return [r for r in results if r is not None]

    def chat(self, question: str, pixel_values: torch.Tensor | None = None,
             num_patches_list: Sequence[int] | None = None,
             history: Sequence[tuple[str, str]] | None = None,
             params: GenerationParams | None = None) -> ChatResult:
        req = ChatRequest(question=question, history=history, pixel_values=pixel_values,
                          num_patches_list=num_patches_list, params=params or GenerationParams())
        return self.generate_batch([req])[0]

    def _run_group(self, group: list[Prepared]) -> list[ChatResult]:
        try:
            return self._run_group_unsafe(group)
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                raise OutOfMemory(f"out of memory on a batch of {len(group)}: {exc}") from exc
            raise

    def build_inputs(self, group: Sequence[Prepared]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``inputs_embeds [B, L, H]`` with image features scattered in, and the
        attention mask ``[B, L]`` (int64, 0 = padding). Sets each request's ``vision_tiles``."""
        width = max(p.prompt_tokens for p in group)
        ids = torch.full((len(group), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for b, p in enumerate(group):
            ids[b, width - p.prompt_tokens:] = torch.tensor(p.input_ids)
            mask[b, width - p.prompt_tokens:] = 1
        feats, encoded = self.row_features([p.request.pixel_values for p in group],
                                           [p.request.vision_key for p in group])
        for p, n in zip(group, encoded, strict=True):
            p.vision_tiles = n
        return self._embed(ids, mask, feats), mask

    @torch.inference_mode()
    def row_features(self, pixel_values: Sequence[torch.Tensor | None],
                     keys: Sequence[str | None] | None = None,
                     ) -> tuple[list[torch.Tensor | None], list[int]]:
        """Each row's image features and the tiles the ViT encoded for it. Rows without a key,
        and the first row of each key not in :attr:`vision_cache`, go through the ViT together
        (in chunks); the other rows of a key reuse those features, or the cached ones. A keyed
        row's features are then cached for the key's later requests."""
        keys = list(keys) if keys is not None else [None] * len(pixel_values)
        feats: list[torch.Tensor | None] = [None] * len(pixel_values)
        encoded = [0] * len(pixel_values)
        todo: list[int] = []
        present: list[torch.Tensor] = []
        first_of: dict[str, int] = {}
        for b, (pv, key) in enumerate(zip(pixel_values, keys, strict=True)):
            if pv is None:
                continue
            if key is not None:
                cached = self.vision_cache.get(key, int(pv.shape[0]))
                if cached is not None:
                    feats[b] = cached
                    continue
                if key in first_of:
                    continue  # a batch neighbour encodes it
                first_of[key] = b
            todo.append(b)
            present.append(pv)
        if todo:
            out = self.image_features(torch.cat(present) if len(present) > 1 else present[0])
            start = 0
            for b, pv in zip(todo, present, strict=True):
                n = int(pv.shape[0])
                feats[b], encoded[b] = out[start:start + n], n
                start += n
                key = keys[b]
                if key is not None:  # its own storage: a view would keep the batch's features alive
                    self.vision_cache.put(key, out[start - n:start].clone() if len(todo) > 1 else out)
        for b, key in enumerate(keys):  # later rows of a key encoded in this batch
            if feats[b] is None and pixel_values[b] is not None and key is not None:
                feats[b] = feats[first_of[key]]
        self.vision_stats.reused_tiles += sum(
            int(pv.shape[0]) for pv, f, n in zip(pixel_values, feats, encoded, strict=True)
            if pv is not None and f is not None and n == 0)
        return feats, encoded

    @torch.inference_mode()
    def embed_with_images(self, ids: torch.Tensor, mask: torch.Tensor,
                          pixel_values: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Token embeddings of ``ids [B, L]`` with row b's ``<IMG_CONTEXT>`` positions replaced,
        in order, by the features of ``pixel_values[b]`` (``[tiles_b, 3, S, S]`` or None). The
        tiles of every row go through the ViT together, in chunks."""
        return self._embed(ids, mask, self.row_features(pixel_values)[0])

    @torch.inference_mode()
    def _embed(self, ids: torch.Tensor, mask: torch.Tensor,
               feats: Sequence[torch.Tensor | None]) -> torch.Tensor:
        embed = self.model.get_input_embeddings()
        dev = embed.weight.device
        ids, mask = ids.to(dev), mask.to(dev)
        embeds = embed(ids)
        for b, f in enumerate(feats):
            if f is None:
                continue
            mine = f.to(dev, embeds.dtype).reshape(-1, embeds.shape[-1])
            where = (ids[b] == self.tokenizer.img_context_id) & (mask[b] == 1)
            # fewer placeholders than tiles (QUIRKS 4): the leftover tiles are unused
            embeds[b, where] = mine[: int(where.sum())]
        return embeds

    @torch.inference_mode()
    def prefill(self, group: Sequence[Prepared]) -> tuple[torch.Tensor, KVLayers]:
        """Prompts of equal length through the model together, unpadded: the float32 logits of
        each one's last position ``[B, V]`` and each layer's keys and values ``[B, H, prompt,
        D]``. The same forward call as the static path's prefill, with no padding to mask."""
        if len({p.prompt_tokens for p in group}) != 1:
            raise InvalidInput("prefill takes prompts of one length")
        embeds, mask = self.build_inputs(group)
        logits, cache, _ = run_prefill(self.model, embeds, mask.to(embeds.device), group[0].prompt_tokens)
        layers: KVLayers = [(layer.keys, layer.values) for layer in cache.layers]
        return logits, layers

    def image_prefix_length(self, p: Prepared) -> int:
        """Tokens of ``p``'s prompt up to and including its last ``</img>`` (0: no image). The
        requests of one ``vision_key`` with the same system message and image placement share
        these tokens exactly: ``</img>`` is a special token, so nothing after it changes how the
        text before it is tokenised."""
        if p.request.pixel_values is None or self.img_end_id is None:
            return 0
        ids = p.input_ids
        for i in range(len(ids) - 1, -1, -1):
            if ids[i] == self.img_end_id:
                return i + 1 if i + 1 < len(ids) else 0
        return 0

    def release_vision(self, key: str) -> None:
        """Drop what is kept for ``key``: its image features and its prompt prefix."""
        self.vision_cache.release(key)
        self.prefix_cache.release(key)

    def stored_prefix(self, p: Prepared) -> tuple[list[int], KVLayers] | None:
        """The prefix stored for ``p``'s vision key that ``p``'s prompt starts with (or None)."""
        key, n = p.request.vision_key, self.image_prefix_length(p)
        if key is None or n == 0:
            return None
        ids = list(p.input_ids[:n])
        layers = self.prefix_cache.get(key, ids)
        return (ids, layers) if layers is not None else None

    def keep_prefix(self, p: Prepared, layers: KVLayers, row: int = 0, start: int = 0) -> None:
        """Store ``p``'s image prefix from a prefill's keys and values (``row`` of the batch, its
        prompt starting at column ``start``), as its own copy."""
        key, n = p.request.vision_key, self.image_prefix_length(p)
        if key is None or n == 0 or key in self.prefix_cache:
            return
        self.prefix_cache.put(key, list(p.input_ids[:n]), [
            (k[row:row + 1, :, start:start + n].clone(), v[row:row + 1, :, start:start + n].clone())
            for k, v in layers])

    @torch.inference_mode()
    def prefill_after(self, p: Prepared, prefix_ids: Sequence[int], prefix_layers: KVLayers,
                      capacity: int | None = None) -> tuple[torch.Tensor, Any]:
        """:meth:`prefill` of one prompt whose first tokens are ``prefix_ids``, with their keys and
        values (``[1, H, n, D]`` per layer) from an earlier prefill: only the rest of the prompt
        goes through the model (no ViT, no image tokens). Returns the last position's float32
        logits ``[1, V]`` and the cache (room for ``capacity`` positions; its layers' ``keys`` /
        ``values`` hold the whole prompt). Raises InvalidInput when the prompt does not start
        with the prefix."""
        n = len(prefix_ids)
        ids = p.input_ids
        if n == 0 or n >= len(ids) or list(ids[:n]) != list(prefix_ids):
            raise InvalidInput("the prompt does not start with the given prefix")
        embed = self.model.get_input_embeddings()
        dev = embed.weight.device
        embeds = embed(torch.tensor([ids[n:]], dtype=torch.long, device=dev))
        cache: Any = reserved_cache(self.model.config.get_text_config(), capacity or len(ids))
        for i, (k, v) in enumerate(prefix_layers):
            cache.update(k, v, i)
        mask = torch.ones((1, len(ids)), dtype=torch.long, device=dev)
        positions = torch.arange(n, len(ids), device=dev).unsqueeze(0)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        p.vision_tiles = 0
        self.prefix_reused_tokens += n
        return out.logits[:, -1, :].float(), cache

    def start_row(self, p: Prepared) -> RowState:
        """The generation state of one request: its :class:`Row` (sampling, stop, hooks, cancel
        check), its structured-output extras and its text stream."""
        req = p.request
        extra = RowExtras.build(self.tokenizer, self.stop_id, req.params)
        stream = None
        if req.on_token is not None:
            stream = TextStream(self.tokenizer, self.template.stop_str, req.on_token)
        row = Row(params=req.params, stop_ids=frozenset({self.stop_id}),
                  on_step=stream if extra.streams_live else None,
                  should_cancel=safe_cancel(req.should_cancel), **extra.kwargs)
        return RowState(p, row, extra, stream)

    def finish_row(self, state: RowState) -> ChatResult:
        """The result of a row that has ended (its stream flushed)."""
        p, row = state.prepared, state.row
        assert row.finish_reason is not None
        done = state.extra.finish(row, prompts.clean_response(self.template, self.tokenizer.decode(row.ids)))
        text = done.text
        if state.stream is not None:
            state.stream.finish(text)
        return ChatResult(
            text=text, prompt_tokens=p.prompt_tokens, output_tokens=len(row.ids),
            finish_reason=row.finish_reason, output_ids=list(row.ids),
            history=prompts.next_history(p.request.history, p.question, text),
            has_json=done.has_json, json=done.json_value, logprobs=done.logprobs,
            vision_tiles=p.vision_tiles,
        )

    def _run_group_unsafe(self, group: list[Prepared]) -> list[ChatResult]:
        states = [self.start_row(p) for p in group]
        rows = [st.row for st in states]
        # a request whose rope may stretch with its length (batch_key "alone") is prefilled
        # whole: a prefix computed for another length could carry another rope
        if len(group) == 1 and group[0].request.vision_key is not None and \
                self.batch_key(group[0]) == "shared":
            self._run_keyed(group[0], rows)
        else:
            embeds, mask = self.build_inputs(group)
            run_generation(self.model, embeds, mask, rows)
        return [self.finish_row(st) for st in states]

    def _run_keyed(self, p: Prepared, rows: list[Row]) -> None:
        """One request of a vision key: from its key's stored prefix when there is one, else
        whole, storing its prefix for the key's next requests."""
        capacity = p.prompt_tokens + p.request.params.max_new_tokens
        mask = torch.ones((1, p.prompt_tokens), dtype=torch.long)
        stored = self.stored_prefix(p)
        if stored is not None:
            logits, cache = self.prefill_after(p, stored[0], stored[1], capacity)
        else:
            embeds, mask = self.build_inputs([p])
            logits, cache, _ = run_prefill(self.model, embeds, mask.to(embeds.device), capacity)
            self.keep_prefix(p, [(layer.keys, layer.values) for layer in cache.layers])
        positions = torch.arange(p.prompt_tokens, device=logits.device).unsqueeze(0)
        run_generation(self.model, None, mask, rows, started=(logits, cache, positions))


@dataclasses.dataclass
class RowState:
    """A request while it generates: see :meth:`Engine.start_row`."""

    prepared: Prepared
    row: Row
    extra: RowExtras
    stream: TextStream | None


__all__ = ["ChatRequest", "ChatResult", "Engine", "EngineError", "EngineInfo", "FinishReason",
           "GenerationParams", "Prepared", "RowState"]
