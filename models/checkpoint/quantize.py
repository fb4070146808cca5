"""8-bit / 4-bit weights through bitsandbytes (optional dependency, imported only here).

The weights are first loaded on the CPU in the 16-bit compute dtype; then each ``nn.Linear`` of
the LLM's decoder layers is replaced, one at a time, by its bitsandbytes counterpart, which
quantizes when moved to the GPU. The vision tower, projector, embeddings and LM head stay in
16-bit (as the InternVL model card's ``load_in_8bit`` path effectively does for quality).
Peak host memory: the 16-bit model once; peak GPU memory: the quantized model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.errors import InvalidInput

QUANTIZATIONS = ("none", "8bit", "4bit")


def _bnb():  # type: ignore[no-untyped-def]
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise InvalidInput("8-bit/4-bit quantization needs the bitsandbytes package (extra 'gpu')") from exc
    return bnb


def check_quantization(mode: str, device: str) -> None:
    if mode not in QUANTIZATIONS:
        raise InvalidInput(f"unknown quantization {mode!r}: {QUANTIZATIONS}")
    if mode != "none":
        if not device.startswith("cuda"):
            raise InvalidInput(f"{mode} quantization needs a single CUDA device, not {device!r}")
        _bnb()


def quantize_llm_linears(model: Any, mode: str, device: torch.device,
                         compute_dtype: torch.dtype) -> int:
    """Replace the decoder layers' Linear modules in place; returns how many were replaced."""
    bnb = _bnb()
    layers = model.model.language_model.layers
    replaced = 0
    for layer in layers:
        for name, module in list(layer.named_modules()):
            if not isinstance(module, nn.Linear):
                continue
            w = module.weight.data
            bias = module.bias is not None
            new: nn.Module
            if mode == "8bit":
                new = bnb.nn.Linear8bitLt(module.in_features, module.out_features, bias=bias,
                                          has_fp16_weights=False, threshold=6.0)
                new.weight = bnb.nn.Int8Params(w.to(compute_dtype), requires_grad=False,
                                               has_fp16_weights=False)
            else:
                new = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=bias,
                                        compute_dtype=compute_dtype, quant_type="nf4")
                new.weight = bnb.nn.Params4bit(w.to(compute_dtype), requires_grad=False, quant_type="nf4")
            if bias:
                new.bias = nn.Parameter(module.bias.data.to(compute_dtype), requires_grad=False)
            new = new.to(device)  # quantizes here
            parent, _, leaf = name.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, leaf, new)
            replaced += 1
    return replaced
