"""Parameter names, shapes and seeded values of the tiny test checkpoints (original key names)."""

from __future__ import annotations

import zlib

import numpy as np

from models.testing.configs import LLM_DIMS, VISION, LlmKind, VisionKind


def weight_shapes(
    llm: LlmKind, vision: VisionKind, vocab_size: int
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Original key name -> (shape, init kind) for every parameter."""
    c, inter, six_b = VISION["hidden"], VISION["inter"], vision == "6b"
    n_pos = (VISION["image"] // VISION["patch"]) ** 2 + 1
    out: dict[str, tuple[tuple[int, ...], str]] = {
        "vision_model.embeddings.class_embedding": ((1, 1, c), "embedding"),
        "vision_model.embeddings.position_embedding": ((1, n_pos, c), "embedding"),
        "vision_model.embeddings.patch_embedding.weight": (
            (c, 3, VISION["patch"], VISION["patch"]),
            "matrix",
        ),
        "vision_model.embeddings.patch_embedding.bias": ((c,), "bias"),
    }
    for i in range(VISION["layers"]):
        p = f"vision_model.encoder.layers.{i}."
        out |= {
            p + "ls1": ((c,), "layer_scale"),
            p + "ls2": ((c,), "layer_scale"),
            p + "attn.qkv.weight": ((3 * c, c), "matrix"),
            p + "attn.proj.weight": ((c, c), "matrix"),
            p + "attn.proj.bias": ((c,), "bias"),
            p + "mlp.fc1.weight": ((inter, c), "matrix"),
            p + "mlp.fc1.bias": ((inter,), "bias"),
            p + "mlp.fc2.weight": ((c, inter), "matrix"),
            p + "mlp.fc2.bias": ((c,), "bias"),
            p + "norm1.weight": ((c,), "norm"),
            p + "norm2.weight": ((c,), "norm"),
        }
        if six_b:  # no qkv bias; RMSNorm (weight only) for q/k over the whole embedding and for norm1/norm2
            out |= {p + "attn.q_norm.weight": ((c,), "norm"), p + "attn.k_norm.weight": ((c,), "norm")}
        else:
            out |= {
                p + "attn.qkv.bias": ((3 * c,), "bias"),
                p + "norm1.bias": ((c,), "bias"),
                p + "norm2.bias": ((c,), "bias"),
            }
    d = LLM_DIMS[llm]
    h, heads, kv, ff = d["hidden"], d["heads"], d["kv"], d["inter"]
    hd = h // heads
    lm = "language_model."
    out |= {
        "mlp1.0.weight": ((4 * c,), "norm"),
        "mlp1.0.bias": ((4 * c,), "bias"),
        "mlp1.1.weight": ((h, 4 * c), "matrix"),
        "mlp1.1.bias": ((h,), "bias"),
        "mlp1.3.weight": ((h, h), "matrix"),
        "mlp1.3.bias": ((h,), "bias"),
    }
    if llm == "internlm2":
        out |= {
            lm + "model.tok_embeddings.weight": ((vocab_size, h), "matrix"),
            lm + "model.norm.weight": ((h,), "norm"),
            lm + "output.weight": ((vocab_size, h), "lm_head"),
        }
        for i in range(d["layers"]):
            p = f"{lm}model.layers.{i}."
            out |= {
                p + "attention.wqkv.weight": (((heads + 2 * kv) * hd, h), "matrix"),
                p + "attention.wo.weight": ((h, heads * hd), "matrix"),
                p + "feed_forward.w1.weight": ((ff, h), "matrix"),
                p + "feed_forward.w3.weight": ((ff, h), "matrix"),
                p + "feed_forward.w2.weight": ((h, ff), "matrix"),
                p + "attention_norm.weight": ((h,), "norm"),
                p + "ffn_norm.weight": ((h,), "norm"),
            }
        return out
    out |= {
        lm + "model.embed_tokens.weight": ((vocab_size, h), "matrix"),
        lm + "model.norm.weight": ((h,), "norm"),
        lm + "lm_head.weight": ((vocab_size, h), "lm_head"),
    }
    for i in range(d["layers"]):
        p = f"{lm}model.layers.{i}."
        out |= {
            p + "self_attn.o_proj.weight": ((h, heads * hd), "matrix"),
            p + "mlp.down_proj.weight": ((h, ff), "matrix"),
            p + "input_layernorm.weight": ((h,), "norm"),
            p + "post_attention_layernorm.weight": ((h,), "norm"),
        }
        if llm == "phi3":
            out |= {
                p + "self_attn.qkv_proj.weight": (((heads + 2 * kv) * hd, h), "matrix"),
                p + "mlp.gate_up_proj.weight": ((2 * ff, h), "matrix"),
            }
            continue
        out |= {
            p + "self_attn.q_proj.weight": ((heads * hd, h), "matrix"),
            p + "self_attn.k_proj.weight": ((kv * hd, h), "matrix"),
            p + "self_attn.v_proj.weight": ((kv * hd, h), "matrix"),
            p + "mlp.gate_proj.weight": ((ff, h), "matrix"),
            p + "mlp.up_proj.weight": ((ff, h), "matrix"),
        }
        if llm == "qwen2":
            out |= {
                p + "self_attn.q_proj.bias": ((heads * hd,), "bias"),
                p + "self_attn.k_proj.bias": ((kv * hd,), "bias"),
                p + "self_attn.v_proj.bias": ((kv * hd,), "bias"),
            }
    return out


_INIT = {
    "matrix": (0.0, 0.02),
    "embedding": (0.0, 0.02),
    "bias": (0.0, 0.02),
    "lm_head": (0.0, 0.08),
    "norm": (1.0, 0.1),
    "layer_scale": (1.0, 0.1),
}


def make_weights(shapes: dict[str, tuple[tuple[int, ...], str]], seed: int) -> dict[str, np.ndarray]:
    out = {}
    for name, (shape, kind) in shapes.items():
        base, scale = _INIT[kind]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        w = (base + scale * rng.standard_normal(shape)).astype(np.float32)
        w[w == 0] = np.float32(scale)  # "no parameter holds a zero" (never happens in practice)
        out[name] = w
    return out
