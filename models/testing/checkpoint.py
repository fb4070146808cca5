"""Tiny random-weight InternVL2 checkpoints in the ORIGINAL Hugging Face layout.

The layout (config.json written as ``InternVLChatConfig.save_pretrained`` writes it, key names
of the published checkpoints, float32 safetensors with ``{"format": "pt"}`` metadata,
generation_config.json, toy tokenizer) follows the conformance kit's two tiny models, which are
the ground truth: ``write_test_checkpoint(d, "internlm2", seed=1001)`` and
``write_test_checkpoint(d, "qwen2", seed=1002)`` reproduce the kit's files (weights bit for bit).
Phi-3 (InternVL2-4B) and Llama (InternVL2-40B/76B) follow their original HF layouts; the
``vision="6b"`` option gives the InternViT-6B layout (no qkv bias, q/k RMSNorm over the whole
embedding, RMSNorm layer norms) used by InternVL2-26B/40B/76B.

Weights: every tensor drawn from ``numpy.random.default_rng([seed, crc32(name)])``: matrices and
biases N(0, 0.02), LM head N(0, 0.08), norm weights and layer scales 1 + N(0, 0.1) — no zeros.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.testing.configs import DEFAULT_TEMPLATE, LIKE, LLM_DIMS, LlmKind, VisionKind, chat_config
from models.testing.real_tokenizer import RealVocab, copy_tokenizer, tokenizer_family
from models.testing.toy_tokenizer import VOCABS, ToyVocab, write_tokenizer
from models.testing.weights import make_weights, weight_shapes

_GEN_NOTE = "mirrors the published InternVL2 generation_config.json layout; chat() overrides eos_token_id"


def write_test_checkpoint(
    directory: Path | str,
    llm: LlmKind,
    *,
    seed: int = 0,
    vision: VisionKind = "300m",
    template: str | None = None,
    tokenizer: Path | str | None = None,
) -> Path:
    """Write a tiny InternVL2 checkpoint (original layout) with the toy tokenizer; returns the
    directory. ``llm`` picks the language model layout, ``vision`` the ViT layout, ``template``
    overrides the conversation template (llama: internlm2-chat like the 76B, or Hermes-2 like
    the 40B). ``tokenizer``: a real tokenizer folder to use instead of the toy one; the LLM
    layout then follows its family (:mod:`models.testing.real_tokenizer`)."""
    from safetensors.numpy import save_file

    if tokenizer is not None:
        llm = tokenizer_family(Path(tokenizer), llm)  # type: ignore[assignment]
    if llm not in LLM_DIMS:
        raise ValueError(f"llm must be one of {', '.join(LLM_DIMS)}, got {llm!r}")
    if vision not in ("300m", "6b"):
        raise ValueError(f"vision must be '300m' or '6b', got {vision!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    vocab: ToyVocab | RealVocab = VOCABS[llm] if tokenizer is None else copy_tokenizer(Path(tokenizer), out)
    template = template or DEFAULT_TEMPLATE[llm]
    stop = {"internlm2-chat": "<|im_end|>", "Hermes-2": "<|im_end|>", "phi3-chat": "<|end|>"}.get(template)
    if stop is None or stop not in vocab.special_tokens:
        raise ValueError(f"template {template!r} does not fit the {llm} tokenizer")
    try:
        config = chat_config(llm, vision, template, vocab, seed)
    except KeyError as exc:
        raise ValueError(f"the {llm} layout needs the token {exc} that the tokenizer lacks") from None
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    second = "<|endoftext|>" if stop == "<|end|>" else "<|im_start|>"
    gen = {
        "eos_token_id": [vocab.id(stop), vocab.id(second)],
        "_note": _GEN_NOTE,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=1) + "\n", encoding="utf-8")
    weights = make_weights(weight_shapes(llm, vision, vocab.vocab_size), seed)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    if isinstance(vocab, ToyVocab):
        variant = f"internvl2-{llm}" + ("-vit6b" if vision == "6b" else "")
        like = LIKE[llm] + (" with an InternViT-6B-layout vision encoder" if vision == "6b" else "")
        write_tokenizer(out, vocab, variant=variant, like=like, template=template, stop=stop)
    return out
