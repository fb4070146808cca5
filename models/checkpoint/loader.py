"""Streaming load: build ``InternVLForConditionalGeneration`` on the meta device, then read the
checkpoint one shard and one tensor at a time, convert, cast, move to the tensor's device and
assign it in place. Peak host memory is the model once plus one shard (never 2x the model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint.cache import ConvertedCache, cache_key
from models.checkpoint.convert import WeightConverter
from models.checkpoint.source import Checkpoint
from models.checkpoint.spec import ModelSpec
from models.errors import CheckpointCorrupt

log = logging.getLogger(__name__)

DeviceFor = Callable[[str], torch.device]


@dataclass
class LoadStats:
    tensors_read: int = 0
    params_assigned: int = 0
    from_cache: bool = False
    cache_folder: Path | None = None


def empty_model(config: Any) -> Any:
    """The model with every parameter on the meta device (no memory, no random init)."""
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        return InternVLForConditionalGeneration(config)


def _safe_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles are not mappings
                yield key, f.get_tensor(key)
    except FileNotFoundError as exc:
        raise CheckpointCorrupt(f"weight shard {path} is missing") from exc
    except Exception as exc:  # SafetensorError, OSError: truncated or garbled file
        raise CheckpointCorrupt(f"weight shard {path} is unreadable or corrupt: {exc}") from exc


def stream_converted(ckpt: Checkpoint, converter: WeightConverter,
                     cache: ConvertedCache | None, stats: LoadStats) -> Iterator[tuple[str, torch.Tensor]]:
    """Converted ``(name, tensor)`` pairs: from the cache when it has a complete entry,
    otherwise converted from the checkpoint (and written to the cache shard by shard)."""
    cached = cache.shards() if cache is not None else None
    if cached is not None:
        stats.from_cache = True
        for shard in cached:
            for pair in _safe_tensors(shard):
                stats.tensors_read += 1
                yield pair
        return
    if cache is not None:
        cache.begin()
    ok = False
    try:
        for shard in ckpt.shards:
            expected = {k for k, v in ckpt.weight_map.items() if v == shard.name}
            converted: dict[str, torch.Tensor] = {}
            for name, tensor in _safe_tensors(shard):
                stats.tensors_read += 1
                expected.discard(name)
                for new_name, new_tensor in converter.convert(name, tensor):
                    if cache is not None:
                        converted[new_name] = new_tensor
                    yield new_name, new_tensor
            if expected:
                raise CheckpointCorrupt(
                    f"{shard.name} lacks {len(expected)} indexed tensor(s), e.g. {sorted(expected)[0]}"
                )
            if cache is not None:
                cache.add_shard(converted)
        ok = True
    finally:
        if cache is not None:
            cache.commit() if ok else cache.abort()


def _assign(model: nn.Module, name: str, tensor: torch.Tensor, device: torch.device,
            dtype: torch.dtype) -> None:
    prefix, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(prefix)
    except AttributeError:
        raise CheckpointCorrupt(f"converted weight {name!r} has no place in the model") from None
    old = module._parameters.get(leaf)
    if old is None:
        raise CheckpointCorrupt(f"converted weight {name!r} has no place in the model")
    if tuple(old.shape) != tuple(tensor.shape):
        raise CheckpointCorrupt(
            f"weight {name!r} has shape {tuple(tensor.shape)}, the config implies {tuple(old.shape)}"
        )
    if not old.is_meta:
        raise CheckpointCorrupt(f"weight {name!r} appears twice in the checkpoint")
    value = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


def materialize_buffers(model: nn.Module, device_for: DeviceFor) -> None:
    """Buffers created on the meta device are rotary tables: rebuild those modules for real."""
    for name, module in list(model.named_modules()):
        if not any(b is not None and b.is_meta for b in module._buffers.values()):
            continue
        config = getattr(module, "config", None)
        if config is None or "Rotary" not in type(module).__name__:
            raise CheckpointCorrupt(f"module {name!r} has buffers that cannot be rebuilt")
        with torch.device(device_for(name)):
            rebuilt = type(module)(config=config)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, rebuilt)


def load_weights(model: Any, ckpt: Checkpoint, spec: ModelSpec, *, dtype: torch.dtype,
                 device_for: DeviceFor, cache_root: Path | None = None) -> LoadStats:
    """Assign every parameter of ``model`` (built by :func:`empty_model`) from ``ckpt``."""
    stats = LoadStats()
    cache = ConvertedCache(cache_root, cache_key(ckpt)) if cache_root is not None else None
    if cache is not None:
        stats.cache_folder = cache.folder
    converter = WeightConverter(spec)
    for name, tensor in stream_converted(ckpt, converter, cache, stats):
        _assign(model, name, tensor, device_for(name), dtype)
        stats.params_assigned += 1
    if spec.tie_word_embeddings and model.lm_head.weight.is_meta:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise CheckpointCorrupt(
            f"checkpoint {ckpt.name} lacks {len(missing)} weight(s) the config needs, e.g. {missing[:3]}"
        )
    materialize_buffers(model, device_for)
    return stats
