"""Layouts the kit has no goldens for, on small random checkpoints written here in the original
InternVL2 layout: an InternViT-6B-style encoder (fused qkv without bias, qk-normalisation over the
whole embedding, RMSNorm, select_layer -2) checked against a plain re-implementation of the
original math, and Phi-3 (fused qkv/gate_up, su -> longrope, phi3-chat) and Llama LLMs that
must load and generate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from models.engine import ChatRequest, Engine
from models.generation import GenerationParams

C, HEADS, LAYERS, INTER, IMAGE, PATCH = 32, 4, 3, 64, 224, 14
HID, VOCAB = 48, 1104  # the toy tokenizer has 1100 ids; <|end|> is added as 1100


def _vision_weights(g: torch.Generator) -> dict[str, torch.Tensor]:
    def r(*shape: int, scale: float = 0.05, base: float = 0.0) -> torch.Tensor:
        return base + scale * torch.randn(*shape, generator=g)

    n = (IMAGE // PATCH) ** 2 + 1
    w = {
        "vision_model.embeddings.class_embedding": r(1, 1, C),
        "vision_model.embeddings.position_embedding": r(1, n, C),
        "vision_model.embeddings.patch_embedding.weight": r(C, 3, PATCH, PATCH),
        "vision_model.embeddings.patch_embedding.bias": r(C),
    }
    for i in range(LAYERS):
        p = f"vision_model.encoder.layers.{i}."
        w |= {p + "ls1": r(C, base=1.0), p + "ls2": r(C, base=1.0), p + "attn.qkv.weight": r(3 * C, C),
              p + "attn.q_norm.weight": r(C, base=1.0), p + "attn.k_norm.weight": r(C, base=1.0),
              p + "attn.proj.weight": r(C, C), p + "attn.proj.bias": r(C),
              p + "mlp.fc1.weight": r(INTER, C), p + "mlp.fc1.bias": r(INTER),
              p + "mlp.fc2.weight": r(C, INTER), p + "mlp.fc2.bias": r(C),
              p + "norm1.weight": r(C, base=1.0), p + "norm2.weight": r(C, base=1.0)}
    w |= {"mlp1.0.weight": r(4 * C, base=1.0), "mlp1.0.bias": r(4 * C), "mlp1.1.weight": r(HID, 4 * C),
          "mlp1.1.bias": r(HID), "mlp1.3.weight": r(HID, HID), "mlp1.3.bias": r(HID)}
    return w


def _llm_weights(family: str, g: torch.Generator, layers: int = 2, heads: int = 4, kv: int = 2,
                 inter: int = 96) -> dict[str, torch.Tensor]:
    d = HID // heads
    w = {"language_model.model.embed_tokens.weight": 0.05 * torch.randn(VOCAB, HID, generator=g),
         "language_model.model.norm.weight": 1 + 0.1 * torch.randn(HID, generator=g),
         "language_model.lm_head.weight": 0.08 * torch.randn(VOCAB, HID, generator=g)}
    for i in range(layers):
        p = f"language_model.model.layers.{i}."
        shapes = {"self_attn.o_proj.weight": (HID, heads * d), "mlp.down_proj.weight": (HID, inter)}
        if family == "phi3":
            shapes |= {"self_attn.qkv_proj.weight": ((heads + 2 * kv) * d, HID),
                       "mlp.gate_up_proj.weight": (2 * inter, HID)}
        else:
            shapes |= {"self_attn.q_proj.weight": (heads * d, HID), "self_attn.k_proj.weight": (kv * d, HID),
                       "self_attn.v_proj.weight": (kv * d, HID), "mlp.gate_proj.weight": (inter, HID),
                       "mlp.up_proj.weight": (inter, HID)}
        for name, shape in shapes.items():
            w[p + name] = 0.05 * torch.randn(*shape, generator=g)
        w[p + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(HID, generator=g)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(HID, generator=g)
    return w


def _write(folder: Path, kit_dir: Path, family: str) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True)
    cfg = json.loads((kit_dir / "models" / "internvl2-qwen2" / "config.json").read_text())
    cfg["select_layer"] = -2
    cfg["force_image_size"] = IMAGE
    cfg["vision_config"] |= {"hidden_size": C, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                             "intermediate_size": INTER, "image_size": IMAGE, "qkv_bias": False,
                             "qk_normalization": True, "norm_type": "rms_norm"}
    llm = {"hidden_size": HID, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "intermediate_size": 96, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "bos_token_id": 1,
           "eos_token_id": 2, "pad_token_id": None, "tie_word_embeddings": False, "hidden_act": "silu"}
    if family == "phi3":
        half = HID // 4 // 2
        llm |= {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "rope_theta": 10000.0,
                "max_position_embeddings": 4096, "original_max_position_embeddings": 512,
                "rope_scaling": {"type": "su", "short_factor": [1.0 + 0.1 * i for i in range(half)],
                                 "long_factor": [2.0 + 0.5 * i for i in range(half)]}}
        cfg["template"] = "phi3-chat"
    else:
        llm |= {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rope_theta": 5e5,
                "max_position_embeddings": 8192, "rope_scaling": None}
        cfg["template"] = "Hermes-2"
    cfg["llm_config"] = llm
    (folder / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(5)
    weights = _vision_weights(g) | _llm_weights(family, g)
    save_file(weights, str(folder / "model.safetensors"))
    src = kit_dir / "models" / "internvl2-qwen2"
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.add_special_tokens([AddedToken("<|end|>", special=True)])  # phi3-chat's stop token
    tok.save(str(folder / "tokenizer.json"))
    return weights


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _reference_vit(w: dict[str, torch.Tensor], pixels: torch.Tensor, upto: int) -> torch.Tensor:
    """The original InternViT math (6B flavour), returning the output of layer ``upto``."""
    x = F.conv2d(pixels, w["vision_model.embeddings.patch_embedding.weight"],
                 w["vision_model.embeddings.patch_embedding.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = w["vision_model.embeddings.class_embedding"].expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], 1) + w["vision_model.embeddings.position_embedding"]
    b, n, _ = x.shape
    d = C // HEADS
    for i in range(upto):
        p = f"vision_model.encoder.layers.{i}."
        h = _rms(x, w[p + "norm1.weight"])
        q, k, v = (h @ w[p + "attn.qkv.weight"].T).reshape(b, n, 3, C).unbind(2)
        q, k = _rms(q, w[p + "attn.q_norm.weight"]), _rms(k, w[p + "attn.k_norm.weight"])  # whole embedding
        q, k, v = (t.reshape(b, n, HEADS, d).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) * d**-0.5, -1) @ v
        att = att.transpose(1, 2).reshape(b, n, C) @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"]
        x = x + att * w[p + "ls1"]
        h = _rms(x, w[p + "norm2.weight"])
        h = F.gelu(h @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"])
        x = x + (h @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"]) * w[p + "ls2"]
    return x


def _reference_features(w: dict[str, torch.Tensor], vit: torch.Tensor) -> torch.Tensor:
    side = IMAGE // PATCH
    grid = vit[:, 1:].reshape(vit.shape[0], side, side, C)
    # pixel shuffle v2: token (i, j) = patches (2i,2j), (2i,2j+1), (2i+1,2j), (2i+1,2j+1)
    x = torch.cat([grid[:, 0::2, 0::2], grid[:, 0::2, 1::2], grid[:, 1::2, 0::2], grid[:, 1::2, 1::2]], -1)
    x = x.reshape(vit.shape[0], -1, 4 * C)
    x = F.layer_norm(x, (4 * C,), w["mlp1.0.weight"], w["mlp1.0.bias"], eps=1e-5)
    x = F.gelu(x @ w["mlp1.1.weight"].T + w["mlp1.1.bias"])
    return x @ w["mlp1.3.weight"].T + w["mlp1.3.bias"]


@pytest.fixture(scope="module", params=["phi3", "llama"])
def synthetic(request: pytest.FixtureRequest, kit_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp(request.param) / "ckpt"
    weights = _write(folder, kit_dir, request.param)
    return Engine.load(folder), weights


@torch.inference_mode()
def test_vit_6b_layout_matches_the_original_math(synthetic: tuple[Engine, dict[str, torch.Tensor]]) -> None:
    engine, weights = synthetic
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    assert engine.spec.vision_layers_kept == LAYERS - 1 and engine.info.num_image_token == 64
    ref = _reference_vit(weights, pixels, upto=LAYERS - 1)  # select_layer -2
    got = engine.model.model.vision_tower(pixel_values=pixels).last_hidden_state
    assert (got - ref).abs().max() < 1e-5
    feats = engine.image_features(pixels)
    assert feats.shape == (2, 64, HID)
    assert (feats - _reference_features(weights, ref)).abs().max() < 1e-5


def test_llm_loads_and_batches(synthetic: tuple[Engine, dict[str, torch.Tensor]]) -> None:
    engine, _ = synthetic
    pixels = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))
    reqs = [ChatRequest("Describe.", pixel_values=pixels, params=GenerationParams(max_new_tokens=6)),
            ChatRequest("Hello!", params=GenerationParams(max_new_tokens=5))]
    batched = engine.generate_batch(reqs)
    assert [r.output_ids for r in batched] == [engine.generate_batch([r])[0].output_ids for r in reqs]
    if engine.spec.llm_family == "phi3":
        assert engine.spec.rope_type == "longrope"
        assert engine.stop_id == engine.tokenizer.token_id("<|end|>")
        # requests that may pass the original 512-token context must not share a batch
        long = engine.prepare(ChatRequest("Describe.", pixel_values=pixels,
                                          params=GenerationParams(max_new_tokens=400)))
        short = engine.prepare(reqs[1])
        assert engine.batch_key(long) != engine.batch_key(short)
