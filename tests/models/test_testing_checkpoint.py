"""models.testing.write_test_checkpoint: the kit's two tiny models are reproduced byte for byte;
the Phi-3 / Llama / InternViT-6B layouts are the original ones and load into the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from models.testing import write_test_checkpoint

FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json", "tiny_tokens.json")


@pytest.mark.parametrize(("llm", "seed", "variant"), [("internlm2", 1001, "internvl2-internlm2"),
                                                      ("qwen2", 1002, "internvl2-qwen2")])
def test_reproduces_kit_models(kit_dir: Path, tmp_path: Path, llm: str, seed: int, variant: str) -> None:
    out = write_test_checkpoint(tmp_path / variant, llm, seed=seed)  # type: ignore[arg-type]
    for name in FILES:
        assert (out / name).read_bytes() == (kit_dir / "models" / variant / name).read_bytes(), name


def _toy_encode(text: str, tiny: dict) -> list[int]:
    specials = sorted(tiny["special_tokens"], key=len, reverse=True)
    ids = [tiny["bos_token_id"]] if tiny["add_bos"] else []
    i = 0
    while i < len(text):
        tok = next((s for s in specials if text.startswith(s, i)), None)
        if tok:
            ids.append(tiny["special_tokens"][tok])
            i += len(tok)
        else:
            ids += [3 + b for b in text[i].encode()]
            i += 1
    return ids


@pytest.mark.parametrize(("llm", "vision", "template", "stop"), [
    ("phi3", "300m", "phi3-chat", "<|end|>"), ("llama", "300m", "internlm2-chat", "<|im_end|>"),
    ("internlm2", "6b", "internlm2-chat", "<|im_end|>"), ("qwen2", "6b", "Hermes-2", "<|im_end|>")])
def test_layouts(tmp_path: Path, llm: str, vision: str, template: str, stop: str) -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    out = write_test_checkpoint(tmp_path / "ck", llm, seed=5, vision=vision)  # type: ignore[arg-type]
    cfg = json.loads((out / "config.json").read_text())
    lc, vc = cfg["llm_config"], cfg["vision_config"]
    assert cfg["architectures"] == ["InternVLChatModel"] and cfg["template"] == template
    w = load_file(out / "model.safetensors")
    assert all(a.dtype == np.float32 and not (a == 0).any() for a in w.values())
    hd = lc["hidden_size"] // lc["num_attention_heads"]
    layer = "language_model.model.layers.0."
    if llm == "phi3":
        assert lc["architectures"] == ["Phi3ForCausalLM"] and lc["rope_scaling"]["type"] == "su"
        assert len(lc["rope_scaling"]["long_factor"]) == len(lc["rope_scaling"]["short_factor"]) == hd // 2
        assert lc["original_max_position_embeddings"] < lc["max_position_embeddings"]
        qkv = (lc["num_attention_heads"] + 2 * lc["num_key_value_heads"]) * hd
        assert w[layer + "self_attn.qkv_proj.weight"].shape == (qkv, lc["hidden_size"])
        assert w[layer + "mlp.gate_up_proj.weight"].shape == (2 * lc["intermediate_size"], lc["hidden_size"])
    if llm == "llama":
        assert lc["architectures"] == ["LlamaForCausalLM"] and lc["rope_scaling"] is None
        assert layer + "self_attn.q_proj.weight" in w and layer + "self_attn.q_proj.bias" not in w
    assert "language_model.lm_head.weight" in w or "language_model.output.weight" in w
    v0 = "vision_model.encoder.layers.0."
    if vision == "6b":
        assert vc["qk_normalization"] and not vc["qkv_bias"] and vc["norm_type"] == "rms_norm"
        assert v0 + "attn.q_norm.weight" in w and v0 + "attn.qkv.bias" not in w and v0 + "norm1.bias" not in w
    else:
        assert v0 + "attn.qkv.bias" in w and v0 + "attn.q_norm.weight" not in w
    assert w["mlp1.1.weight"].shape == (lc["hidden_size"], 4 * vc["hidden_size"])

    tiny = json.loads((out / "tiny_tokens.json").read_text())
    assert tiny["stop_token_used_by_chat"] == stop and tiny["template"] == template
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nHé 🙂 <|end|>" if llm == "phi3" else \
        "<|im_start|>user\n<img><IMG_CONTEXT></img>\nHé 🙂<|im_end|>"
    want = _toy_encode(text, tiny)
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids == want
    fast = PreTrainedTokenizerFast.from_pretrained(out)
    assert fast(text)["input_ids"] == want
    assert fast.convert_tokens_to_ids(stop) == tiny["stop_token_id_used_by_chat"]
    assert fast.decode([3 + ord("a"), 495], skip_special_tokens=True) == "a[495]"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"][0] == tiny["stop_token_id_used_by_chat"]


def test_seed_and_errors(tmp_path: Path) -> None:
    a = load_file(write_test_checkpoint(tmp_path / "a", "llama", seed=1) / "model.safetensors")
    b = load_file(write_test_checkpoint(tmp_path / "b", "llama", seed=2) / "model.safetensors")
    assert a.keys() == b.keys() and not np.array_equal(a["mlp1.1.weight"], b["mlp1.1.weight"])
    hermes = write_test_checkpoint(tmp_path / "c", "llama", template="Hermes-2")
    assert json.loads((hermes / "config.json").read_text())["template"] == "Hermes-2"
    with pytest.raises(ValueError):
        write_test_checkpoint(tmp_path / "d", "gpt2")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        write_test_checkpoint(tmp_path / "e", "phi3", template="internlm2-chat")


@pytest.mark.parametrize(("llm", "vision"), [("internlm2", "6b"), ("qwen2", "300m"), ("phi3", "300m"),
                                             ("llama", "6b")])
def test_engine_loads_and_generates(tmp_path: Path, llm: str, vision: str) -> None:
    import torch

    from models.engine import ChatRequest, Engine
    from models.generation import GenerationParams

    out = write_test_checkpoint(tmp_path / "ck", llm, seed=3, vision=vision)  # type: ignore[arg-type]
    engine = Engine.load(out, device="cpu")
    assert engine.spec.llm_family == llm
    pixels = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    results = engine.generate_batch([
        ChatRequest("Describe.", pixel_values=pixels, params=GenerationParams(max_new_tokens=3)),
        ChatRequest("Hi", params=GenerationParams(max_new_tokens=3))])
    assert all(1 <= len(r.output_ids) <= 3 for r in results)
