"""Where and how the model runs: device, dtype, attention kernel and the multi-GPU split.

- dtype ``auto``: float32 on CPU; bfloat16 on a GPU that supports it, else float16.
- attention ``auto``: ``flash_attention_2`` when on CUDA in 16-bit and ``flash_attn`` imports,
  else ``sdpa``.
- device ``auto``: ``cuda:0`` when CUDA is available, else ``cpu``; ``split`` (or ``auto`` when
  the weights do not fit 85% of one GPU) spreads the LLM layers over every visible GPU like the
  InternVL2 model card's ``split_model``: GPU 0 counts as half a GPU and also holds the vision
  tower, the projector, the embeddings, the final norm, the LM head and the last layer.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import torch

from models.errors import InvalidInput

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda[:n]`` or ``split``."""
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "split" or device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInput(f"device {device!r} requested but CUDA is not available")
        return device if ":" in device else "cuda:0"
    raise InvalidInput(f"unknown device {device!r} (auto, cpu, cuda, cuda:N, split)")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        if device == "cpu":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise InvalidInput(f"unknown dtype {dtype!r} (auto, float32, bfloat16, float16)") from None


def resolve_attention(attn: str, device: str, dtype: torch.dtype) -> str:
    if attn not in ATTN_IMPLEMENTATIONS:
        raise InvalidInput(f"unknown attention implementation {attn!r}: {ATTN_IMPLEMENTATIONS}")
    flash_ok = (device != "cpu" and dtype in (torch.float16, torch.bfloat16)
                and importlib.util.find_spec("flash_attn") is not None)
    if attn == "auto":
        return "flash_attention_2" if flash_ok else "sdpa"
    if attn == "flash_attention_2" and not flash_ok:
        raise InvalidInput("flash_attention_2 needs CUDA, a 16-bit dtype and the flash_attn package")
    return attn


def split_device_map(num_layers: int, world_size: int) -> dict[str, int]:
    """Module-prefix -> GPU index, following the model card's ``split_model`` rule."""
    if world_size < 1:
        raise InvalidInput("split needs at least one GPU")
    per_gpu = math.ceil(num_layers / (world_size - 0.5)) if world_size > 1 else num_layers
    counts = [per_gpu] * world_size
    counts[0] = math.ceil(per_gpu * 0.5) if world_size > 1 else num_layers
    device_map: dict[str, int] = {}
    layer = 0
    for gpu, count in enumerate(counts):
        for _ in range(count):
            if layer < num_layers:
                device_map[f"model.language_model.layers.{layer}"] = gpu
            layer += 1
    for prefix in ("model.vision_tower", "model.multi_modal_projector", "model.language_model.embed_tokens",
                   "model.language_model.norm", "model.language_model.rotary_emb", "lm_head",
                   f"model.language_model.layers.{num_layers - 1}"):
        device_map[prefix] = 0
    return device_map


def device_lookup(device_map: dict[str, int] | None, device: str) -> Callable[[str], torch.device]:
    """``name -> torch.device`` for a parameter or module name (longest matching prefix)."""
    if device_map is None:
        fixed = torch.device(device)
        return lambda _name: fixed
    prefixes = sorted(device_map, key=len, reverse=True)

    def lookup(name: str) -> torch.device:
        for p in prefixes:
            if name == p or name.startswith(p + "."):
                return torch.device("cuda", device_map[p])
        return torch.device("cuda", 0)

    return lookup


def needs_split(weight_bytes: int, device: str) -> bool:
    if not device.startswith("cuda") or torch.cuda.device_count() < 2:
        return False
    index = int(device.split(":")[1]) if ":" in device else 0
    return weight_bytes > 0.85 * torch.cuda.get_device_properties(index).total_memory
