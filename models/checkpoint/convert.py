"""Tensor-by-tensor conversion of original InternVL2 weight names onto transformers'
``InternVLForConditionalGeneration`` parameter names.

``WeightConverter.convert(name, tensor)`` returns the converted ``(name, tensor)`` pairs for one
original tensor (several for fused tensors, none for tensors the converted model does not use),
so a checkpoint can be streamed one tensor at a time. Unknown names raise
:class:`UnsupportedArchitecture` rather than being silently dropped: a key we do not understand
means a layout we have not checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from models.checkpoint.spec import ModelSpec
from models.errors import CheckpointCorrupt, UnsupportedArchitecture

#: Bump when the mapping changes: part of the converted-weights cache key.
CONVERTER_VERSION = 1

Pairs = list[tuple[str, torch.Tensor]]

_VIT = "model.vision_tower."
_LM = "model.language_model."
_VIT_LAYER_PARTS = {
    "ls1": "lambda_1",
    "ls2": "lambda_2",
    "attn.proj": "attention.projection_layer",
    "attn.q_norm": "attention.q_norm",
    "attn.k_norm": "attention.k_norm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
}
_INTERNLM2_LAYER_PARTS = {
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_MLP1 = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_SKIP = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_VIT_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$|"
                        r"^vision_model\.encoder\.layers\.(\d+)\.(ls[12])$")
_INTERNLM2_LAYER = re.compile(r"^language_model\.model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def split_vit_qkv(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternViT's fused ``qkv`` is plainly ``[Q | K | V]`` along dim 0."""
    q, k, v = t.chunk(3, dim=0)
    return q, k, v


def split_internlm2_wqkv(t: torch.Tensor, num_heads: int, num_kv_heads: int,
                         head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternLM2's ``wqkv`` rows are grouped per kv head: ``[q_0..q_{g-1}, k, v]`` (QUIRKS 15).

    Query head ``h*g + j`` belongs to kv head ``h`` — exactly the grouping transformers'
    ``repeat_kv`` assumes, so the q rows keep that order."""
    g = num_heads // num_kv_heads
    rows = num_kv_heads * (g + 2) * head_dim
    if t.shape[0] != rows:
        raise CheckpointCorrupt(f"wqkv has {t.shape[0]} rows, expected {rows}")
    grouped = t.reshape(num_kv_heads, g + 2, head_dim, *t.shape[1:])
    q = grouped[:, :g].reshape(num_heads * head_dim, *t.shape[1:])
    k = grouped[:, g].reshape(num_kv_heads * head_dim, *t.shape[1:])
    v = grouped[:, g + 1].reshape(num_kv_heads * head_dim, *t.shape[1:])
    return q, k, v


class WeightConverter:
    """Maps one original tensor at a time; see the module docstring."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._llm: Callable[[str, torch.Tensor], Pairs] = (
            self._internlm2 if spec.llm_family == "internlm2" else self._hf_llm
        )

    def convert(self, name: str, tensor: torch.Tensor) -> Pairs:
        if _SKIP.search(name):
            return []
        if name.startswith("vision_model."):
            return self._vision(name, tensor)
        if name.startswith("mlp1."):
            idx, _, leaf = name[len("mlp1."):].partition(".")
            if idx in _MLP1 and leaf in ("weight", "bias"):
                return [(f"model.multi_modal_projector.{_MLP1[idx]}.{leaf}", tensor)]
        if name.startswith("language_model."):
            return self._llm(name, tensor)
        raise UnsupportedArchitecture(f"unexpected weight {name!r} in the checkpoint")

    # --- vision ---------------------------------------------------------------------------
    def _vision(self, name: str, t: torch.Tensor) -> Pairs:
        emb = {
            "vision_model.embeddings.class_embedding": "embeddings.cls_token",
            "vision_model.embeddings.position_embedding": "embeddings.position_embeddings",
            "vision_model.embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
            "vision_model.embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
        }
        if name in emb:
            return [(_VIT + emb[name], t)]
        m = _VIT_LAYER.match(name)
        if not m:
            raise UnsupportedArchitecture(f"unexpected vision weight {name!r}")
        if m.group(4) is not None:
            layer, part, leaf = int(m.group(4)), m.group(5), ""
        else:
            layer, part, leaf = int(m.group(1)), m.group(2), "." + m.group(3)
        if layer >= self.spec.vision_layers_kept:
            return []  # after select_layer: never influences the features
        prefix = f"{_VIT}encoder.layer.{layer}."
        if part == "attn.qkv":
            q, k, v = split_vit_qkv(t)
            return [(f"{prefix}attention.{p}_proj{leaf}", x) for p, x in zip("qkv", (q, k, v), strict=True)]
        if part not in _VIT_LAYER_PARTS:
            raise UnsupportedArchitecture(f"unexpected vision weight {name!r}")
        return [(prefix + _VIT_LAYER_PARTS[part] + leaf, t)]

    # --- language models --------------------------------------------------------------------
    def _internlm2(self, name: str, t: torch.Tensor) -> Pairs:
        if name == "language_model.model.tok_embeddings.weight":
            return [(_LM + "embed_tokens.weight", t)]
        if name == "language_model.model.norm.weight":
            return [(_LM + "norm.weight", t)]
        if name == "language_model.output.weight":
            return [("lm_head.weight", t)]
        m = _INTERNLM2_LAYER.match(name)
        if not m:
            raise UnsupportedArchitecture(f"unexpected InternLM2 weight {name!r}")
        layer, part, leaf = m.group(1), m.group(2), m.group(3)
        prefix = f"{_LM}layers.{layer}."
        if part == "attention.wqkv":
            s = self.spec
            q, k, v = split_internlm2_wqkv(t, s.num_attention_heads, s.num_key_value_heads, s.head_dim)
            return [(f"{prefix}self_attn.{p}_proj.{leaf}", x) for p, x in zip("qkv", (q, k, v), strict=True)]
        if part not in _INTERNLM2_LAYER_PARTS:
            raise UnsupportedArchitecture(f"unexpected InternLM2 weight {name!r}")
        return [(prefix + _INTERNLM2_LAYER_PARTS[part] + "." + leaf, t)]

    def _hf_llm(self, name: str, t: torch.Tensor) -> Pairs:
        """Qwen2 / Phi-3 / Llama checkpoints already use transformers' names (Phi-3's fused
        ``qkv_proj`` / ``gate_up_proj`` exist in transformers' Phi-3 too)."""
        rest = name[len("language_model."):]
        if rest == "lm_head.weight":
            return [("lm_head.weight", t)]
        if rest.startswith("model."):
            return [(_LM + rest[len("model."):], t)]
        raise UnsupportedArchitecture(f"unexpected {self.spec.llm_family} weight {name!r}")
