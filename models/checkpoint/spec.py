"""The original ``InternVLChatConfig`` (config.json as data) mapped onto transformers' own
``InternVLConfig`` (vision: ``InternVLVisionConfig``; text: Llama/Qwen2/Phi-3 configs).

Mapping rules (each checked against the conformance goldens where the kit covers it):

- Vision (InternViT-300M and -6B): fused ``qkv`` -> q/k/v (``attention_bias`` = ``qkv_bias``),
  ``qk_normalization`` -> ``use_qk_norm`` (an RMSNorm over the whole embedding, like the
  original), ``norm_type`` layer_norm|rms_norm, ``ls1/ls2`` -> ``lambda_1/2``.
  ``use_mean_pooling=True`` only to get *no* final vision norm (the original has none).
  ``select_layer = -k`` keeps the first ``N - k + 1`` layers: ``hidden_states[-k]`` of the
  original is the output of that layer, and the layers after it never influence the result.
- Projector ``mlp1``: LayerNorm(4·Cv, eps 1e-5) -> Linear -> GELU -> Linear = transformers'
  ``InternVLMultiModalProjector``; pixel shuffle ``v2`` = transformers' ``pixel_shuffle``.
- LLM: InternLM2 -> Llama (dynamic/linear rope kept as is), Qwen2 -> Qwen2, Phi-3 -> Phi-3
  (``su`` -> ``longrope`` with ``original_max_position_embeddings`` inside the rope dict),
  Llama/Yi -> Llama. Top config: ``tie_word_embeddings`` from the LLM config (False for every
  InternVL2), ``image_token_id`` = the tokenizer's ``<IMG_CONTEXT>`` id (looked up by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.errors import UnsupportedArchitecture

#: Original LLM class -> (family, transformers model_type it is converted onto)
LLM_FAMILIES: dict[str, tuple[str, str]] = {
    "InternLM2ForCausalLM": ("internlm2", "llama"),
    "Qwen2ForCausalLM": ("qwen2", "qwen2"),
    "Phi3ForCausalLM": ("phi3", "phi3"),
    "LlamaForCausalLM": ("llama", "llama"),
}
_VISION_ARCHS = ("InternVisionModel",)
_VISION_TYPES = ("intern_vit_6b", "intern_vit")


@dataclass(frozen=True)
class ModelSpec:
    """Facts the engine needs, all read from config.json."""

    template: str
    llm_family: str  # internlm2 | qwen2 | phi3 | llama
    text_model_type: str  # llama | qwen2 | phi3
    image_size: int
    patch_size: int
    downsample_ratio: float
    num_image_token: int  # tokens per tile after pixel shuffle (256 for InternVL2)
    vision_layers_kept: int  # after select_layer
    vision_layers_total: int
    max_position_embeddings: int
    max_dynamic_patch: int
    use_thumbnail: bool
    vocab_size: int
    tie_word_embeddings: bool
    text_kwargs: dict[str, Any]
    vision_kwargs: dict[str, Any]
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_type: str

    def text_config(self) -> Any:
        from transformers import AutoConfig

        return AutoConfig.for_model(self.text_model_type, **self.text_kwargs)

    def internvl_config(self, image_token_id: int) -> Any:
        """transformers ``InternVLConfig`` for this checkpoint."""
        from transformers import InternVLConfig
        from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

        return InternVLConfig(
            vision_config=InternVLVisionConfig(**self.vision_kwargs),
            text_config=self.text_config(),
            image_token_id=image_token_id,
            image_seq_length=self.num_image_token,
            downsample_ratio=self.downsample_ratio,
            projector_hidden_act="gelu",
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            tie_word_embeddings=self.tie_word_embeddings,
        )


def _need(cfg: dict[str, Any], key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise UnsupportedArchitecture(f"config.json: {where} lacks {key!r}")
    return cfg[key]


def parse_spec(config: dict[str, Any]) -> ModelSpec:
    """Validate an InternVLChatConfig dict and derive the conversion spec."""
    vision = config.get("vision_config")
    llm = config.get("llm_config")
    if not isinstance(vision, dict) or not isinstance(llm, dict):
        raise UnsupportedArchitecture(
            "config.json is not an InternVL chat config (needs vision_config and llm_config); "
            f"model_type={config.get('model_type')!r}"
        )
    template = config.get("template")
    if not isinstance(template, str) or not template:
        raise UnsupportedArchitecture("config.json has no conversation 'template'")
    if config.get("ps_version", "v1") != "v2":
        raise UnsupportedArchitecture(
            f"pixel shuffle {config.get('ps_version')!r} is not supported (InternVL2 uses 'v2')"
        )
    vision_kwargs, layers_total, layers_kept, image_size, patch = _vision_kwargs(config, vision)
    arch = (llm.get("architectures") or [None])[0]
    if arch not in LLM_FAMILIES:
        raise UnsupportedArchitecture(
            f"LLM architecture {arch!r} is not supported; supported: {', '.join(LLM_FAMILIES)}"
        )
    family, model_type = LLM_FAMILIES[arch]
    text_kwargs = _text_kwargs(family, llm)
    ratio = float(config.get("downsample_ratio", 0.5))
    per_side = image_size // patch
    if abs(per_side * ratio - round(per_side * ratio)) > 1e-9:
        raise UnsupportedArchitecture(f"downsample_ratio {ratio} does not divide {per_side} patches")
    heads = int(text_kwargs["num_attention_heads"])
    kv = int(text_kwargs.get("num_key_value_heads") or heads)
    return ModelSpec(
        template=template,
        llm_family=family,
        text_model_type=model_type,
        image_size=image_size,
        patch_size=patch,
        downsample_ratio=ratio,
        num_image_token=int(round(per_side * ratio) ** 2),
        vision_layers_kept=layers_kept,
        vision_layers_total=layers_total,
        max_position_embeddings=int(text_kwargs["max_position_embeddings"]),
        max_dynamic_patch=int(config.get("max_dynamic_patch", 12)),
        use_thumbnail=bool(config.get("use_thumbnail", True)),
        vocab_size=int(text_kwargs["vocab_size"]),
        tie_word_embeddings=bool(text_kwargs["tie_word_embeddings"]),
        text_kwargs=text_kwargs,
        vision_kwargs=vision_kwargs,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=int(text_kwargs["hidden_size"]) // heads,
        rope_type=str(text_kwargs["rope_parameters"].get("rope_type", "default")),
    )


def _vision_kwargs(config: dict[str, Any], v: dict[str, Any]) -> tuple[dict[str, Any], int, int, int, int]:
    arch = (v.get("architectures") or [None])[0]
    if arch not in _VISION_ARCHS and v.get("model_type") not in _VISION_TYPES:
        raise UnsupportedArchitecture(
            f"vision encoder {arch or v.get('model_type')!r} is not an InternViT"
        )
    image_size = int(config.get("force_image_size") or _need(v, "image_size", "vision_config"))
    if int(v.get("image_size", image_size)) != image_size:
        raise UnsupportedArchitecture(
            f"force_image_size {image_size} differs from the ViT's {v.get('image_size')} "
            "(position-embedding resizing is not supported)"
        )
    patch = int(_need(v, "patch_size", "vision_config"))
    total = int(_need(v, "num_hidden_layers", "vision_config"))
    select = int(config.get("select_layer", -1))
    kept = total + 1 + select if select < 0 else select
    if not 1 <= kept <= total:
        raise UnsupportedArchitecture(f"select_layer {select} is outside the ViT's {total} layers")
    norm_type = v.get("norm_type", "rms_norm")
    if norm_type not in ("layer_norm", "rms_norm"):
        raise UnsupportedArchitecture(f"vision norm_type {norm_type!r} is not supported")
    kwargs = {
        "hidden_size": int(_need(v, "hidden_size", "vision_config")),
        "num_hidden_layers": kept,
        "num_attention_heads": int(_need(v, "num_attention_heads", "vision_config")),
        "intermediate_size": int(_need(v, "intermediate_size", "vision_config")),
        "attention_bias": bool(v.get("qkv_bias", False)),
        "use_qk_norm": bool(v.get("qk_normalization", False)),
        "norm_type": norm_type,
        "layer_norm_eps": float(v.get("layer_norm_eps", 1e-6)),
        "hidden_act": v.get("hidden_act", "gelu"),
        "image_size": image_size,
        "patch_size": patch,
        "num_channels": int(v.get("num_channels", 3)),
        "use_mean_pooling": True,  # = no final vision LayerNorm, as in the original
    }
    return kwargs, total, kept, image_size, patch


def _rope(family: str, llm: dict[str, Any]) -> dict[str, Any]:
    theta = float(llm.get("rope_theta", 10000.0))
    scaling = llm.get("rope_scaling")
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    kind = str(scaling.get("type") or scaling.get("rope_type") or "")
    if family == "phi3" and kind in ("su", "longrope"):
        rope = {
            "rope_type": "longrope",
            "rope_theta": theta,
            "short_factor": list(_need(scaling, "short_factor", "rope_scaling")),
            "long_factor": list(_need(scaling, "long_factor", "rope_scaling")),
            "original_max_position_embeddings": int(
                _need(llm, "original_max_position_embeddings", "llm_config")
            ),
        }
        return rope
    if kind in ("dynamic", "linear") and family != "phi3":
        return {"rope_type": kind, "rope_theta": theta, "factor": float(_need(scaling, "factor", kind))}
    if kind == "llama3" and family == "llama":
        return {**scaling, "rope_type": "llama3", "rope_theta": theta}
    raise UnsupportedArchitecture(f"rope scaling {kind!r} is not supported for {family}")


def _text_kwargs(family: str, llm: dict[str, Any]) -> dict[str, Any]:
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "max_position_embeddings")
    kw: dict[str, Any] = {k: int(_need(llm, k, "llm_config")) for k in keys}
    kw["num_key_value_heads"] = int(llm.get("num_key_value_heads") or kw["num_attention_heads"])
    kw["hidden_act"] = llm.get("hidden_act", "silu")
    kw["rms_norm_eps"] = float(llm.get("rms_norm_eps", 1e-6))
    kw["tie_word_embeddings"] = bool(llm.get("tie_word_embeddings", False))
    kw["rope_parameters"] = _rope(family, llm)
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        kw[k] = llm.get(k)
    if family == "internlm2":
        kw["attention_bias"] = bool(llm.get("bias", False))  # wqkv and wo share the flag
    elif family == "llama":
        kw["attention_bias"] = bool(llm.get("attention_bias", False))
        kw["mlp_bias"] = bool(llm.get("mlp_bias", False))
    elif family == "qwen2":
        kw["use_sliding_window"] = bool(llm.get("use_sliding_window", False))
        kw["sliding_window"] = llm.get("sliding_window") if kw["use_sliding_window"] else None
        kw["max_window_layers"] = int(llm.get("max_window_layers", kw["num_hidden_layers"]))
    elif family == "phi3":
        kw["original_max_position_embeddings"] = int(
            llm.get("original_max_position_embeddings", kw["max_position_embeddings"])
        )
        kw["sliding_window"] = llm.get("sliding_window")
    return kw
