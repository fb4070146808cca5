"""config.json of the tiny test checkpoints, as ``InternVLChatConfig.save_pretrained`` (transformers
4.44.2) writes it: every ``PretrainedConfig`` default field, then the model's own fields. Field
values follow the conformance kit for InternLM2 / Qwen2 and the original HF configs for Phi-3 and
Llama (see REAL_MODELS.md); sizes are tiny."""

from __future__ import annotations

import zlib
from typing import Any, Literal, Protocol

import numpy as np

LlmKind = Literal["internlm2", "qwen2", "phi3", "llama"]
VisionKind = Literal["300m", "6b"]


class AnyVocab(Protocol):
    """A toy vocabulary or a real tokenizer's (models.testing.real_tokenizer.RealVocab)."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def special_tokens(self) -> dict[str, int]: ...

VISION = dict(hidden=64, layers=2, heads=4, inter=256, image=448, patch=14)
LLM_DIMS: dict[str, dict[str, int]] = {
    "internlm2": dict(hidden=128, layers=2, heads=4, kv=2, inter=256),
    "qwen2": dict(hidden=128, layers=2, heads=4, kv=2, inter=320),
    "phi3": dict(hidden=128, layers=2, heads=4, kv=4, inter=256),  # Phi-3-mini is MHA
    "llama": dict(hidden=128, layers=2, heads=4, kv=2, inter=256),
}
DEFAULT_TEMPLATE = {
    "internlm2": "internlm2-chat",
    "qwen2": "Hermes-2",
    "phi3": "phi3-chat",
    "llama": "internlm2-chat",
}  # 76B's fine-tune template; pass template="Hermes-2" for 40B
LIKE = {
    "internlm2": "InternVL2-2B / InternVL2-8B (InternViT-300M + InternLM2 with wqkv, dynamic NTK rope)",
    "qwen2": "InternVL2-1B (InternViT-300M + Qwen2-0.5B-style LLM with q/k/v bias)",
    "phi3": "InternVL2-4B (InternViT-300M + Phi-3-mini-128k-style LLM: fused qkv_proj/gate_up_proj, su rope)",
    "llama": "InternVL2-Llama3-76B / InternVL2-40B (LlamaForCausalLM)",
}
_ARCH = {
    "internlm2": "InternLM2ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "llama": "LlamaForCausalLM",
}

# PretrainedConfig.to_dict() defaults as transformers 4.44.2 writes them (the kit's config.json).
_PRETRAINED: dict[str, Any] = {
    "_name_or_path": "",
    "add_cross_attention": False,
    "bad_words_ids": None,
    "begin_suppress_tokens": None,
    "bos_token_id": None,
    "chunk_size_feed_forward": 0,
    "cross_attention_hidden_size": None,
    "decoder_start_token_id": None,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "early_stopping": False,
    "encoder_no_repeat_ngram_size": 0,
    "eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "finetuning_task": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False,
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beam_groups": 1,
    "num_beams": 1,
    "num_return_sequences": 1,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "pad_token_id": None,
    "prefix": None,
    "problem_type": None,
    "pruned_heads": {},
    "remove_invalid_values": False,
    "repetition_penalty": 1.0,
    "return_dict": True,
    "return_dict_in_generate": False,
    "sep_token_id": None,
    "suppress_tokens": None,
    "task_specific_params": None,
    "temperature": 1.0,
    "tf_legacy_loss": False,
    "tie_encoder_decoder": False,
    "tie_word_embeddings": True,
    "tokenizer_class": None,
    "top_k": 50,
    "top_p": 1.0,
    "torch_dtype": None,
    "torchscript": False,
    "transformers_version": "4.44.2",
    "typical_p": 1.0,
    "use_bfloat16": False,
}


def vision_config(vision: VisionKind) -> dict[str, Any]:
    v = VISION
    six_b = vision == "6b"
    return _PRETRAINED | {
        "architectures": ["InternVisionModel"],
        "attention_dropout": 0.0,
        "drop_path_rate": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": v["hidden"],
        "image_size": v["image"],
        "initializer_factor": 0.1 if six_b else 1.0,
        "initializer_range": 0.02,
        "intermediate_size": v["inter"],
        "layer_norm_eps": 1e-06,
        "model_type": "intern_vit_6b",
        "norm_type": "rms_norm" if six_b else "layer_norm",
        "num_attention_heads": v["heads"],
        "num_channels": 3,
        "num_hidden_layers": v["layers"],
        "patch_size": v["patch"],
        "qk_normalization": six_b,
        "qkv_bias": not six_b,
        "use_flash_attn": False,
    }


def phi3_rope_scaling(head_dim: int, seed: int) -> dict[str, Any]:
    """``su`` scaling as in Phi-3-mini-128k: one factor per rotary frequency; long factors grow
    with the frequency index (1 .. ~5), short ones stay close to 1."""
    rng = np.random.default_rng([seed, zlib.crc32(b"rope_scaling")])
    n = head_dim // 2
    long = np.sort(1.0 + 4.0 * rng.random(n))
    short = 1.0 + 0.05 * rng.random(n)
    return {
        "long_factor": [round(float(x), 6) for x in long],
        "short_factor": [round(float(x), 6) for x in short],
        "type": "su",
    }


def llm_config(llm: LlmKind, vocab: AnyVocab, seed: int) -> dict[str, Any]:
    d = LLM_DIMS[llm]
    common = {
        "architectures": [_ARCH[llm]],
        "attn_implementation": "eager",
        "hidden_act": "silu",
        "hidden_size": d["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": d["inter"],
        "model_type": llm,
        "num_attention_heads": d["heads"],
        "num_hidden_layers": d["layers"],
        "num_key_value_heads": d["kv"],
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": vocab.vocab_size,
    }
    ids = vocab.special_tokens
    if llm == "internlm2":
        own = {
            "bias": False,
            "bos_token_id": ids["<s>"],
            "eos_token_id": ids["</s>"],
            "pad_token_id": ids["</s>"],
            "max_position_embeddings": 1280,
            "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 2.0, "type": "dynamic"},
            "rope_theta": 1000000,
        }
    elif llm == "qwen2":
        own = {
            "attention_dropout": 0.0,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "max_position_embeddings": 32768,
            "max_window_layers": d["layers"],
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "use_sliding_window": False,
        }
    elif llm == "phi3":
        own = {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": ids["<s>"],
            "embd_pdrop": 0.0,
            "eos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "max_position_embeddings": 32768,
            "original_max_position_embeddings": 1024,
            "resid_pdrop": 0.0,
            "rms_norm_eps": 1e-05,
            "rope_scaling": phi3_rope_scaling(d["hidden"] // d["heads"], seed),
            "rope_theta": 10000.0,
            "sliding_window": 32768,
        }
    else:
        own = {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": ids["<|begin_of_text|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|end_of_text|>"],
            "max_position_embeddings": 8192,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "rope_theta": 500000.0,
        }
    return _PRETRAINED | common | own


def chat_config(
    llm: LlmKind, vision: VisionKind, template: str, vocab: AnyVocab, seed: int
) -> dict[str, Any]:
    lc = llm_config(llm, vocab, seed)
    return {
        "_commit_hash": None,
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": VISION["image"],
        "hidden_size": lc["hidden_size"],
        "llm_config": lc,
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "model_type": "internvl_chat",
        "pad2square": False,
        "ps_version": "v2",
        "select_layer": -1,
        "template": template,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": None,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "vision_config": vision_config(vision),
    }
