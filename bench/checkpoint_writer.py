"""Random-weight InternVL2 checkpoints in the ORIGINAL layout, for the engine benchmarks.

    dims = Dims(...) or INTERNVL2_8B
    n_params = write_model(folder, dims, dtype=torch.bfloat16, device="cuda", toy_tokenizer=False)

InternViT (fused ``qkv`` with bias, layer scales ``ls1/ls2``, LayerNorm) + ``mlp1`` + InternLM2
(fused ``wqkv`` grouped per kv head, dynamic-NTK rope), so that ``Engine.load`` converts it like
a published checkpoint. config.json is the conformance kit's tiny InternLM2 config with the sizes
replaced, so its structure is exactly the one the converter is tested on. Weights larger than
``shard_bytes`` are split into ``model-0000i-of-0000N.safetensors`` shards with a
``model.safetensors.index.json``, as the published InternVL2 checkpoints are.

Values: N(0, 0.02) for matrices and biases, N(0, 0.08) for the LM head, 1 + N(0, 0.02) for norm
weights and layer scales, drawn from one seeded generator in a fixed order (on the CPU in float32
this reproduces bench_engine_batch.py's earlier weights exactly; on CUDA they are drawn on the
GPU directly in the target dtype, which is what makes 8 billion of them take seconds).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
KIT_MODEL = ROOT / "tests" / "data" / "conformance" / "models" / "internvl2-internlm2"
MARKER = "bench_checkpoint.json"  # written last: a folder without it is an interrupted write

SUBJECTS = ["a harbour at dawn", "a red bicycle", "two cats on a sofa", "a mountain lake",
            "a busy market", "an old library", "a snowy street", "a bowl of fruit"]


@dataclass(frozen=True)
class Dims:
    image_size: int
    vit_hidden: int
    vit_layers: int
    vit_heads: int
    vit_intermediate: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_size: int | None = None  # None: the tokenizer's own size
    max_position_embeddings: int = 32768


#: OpenGVLab/InternVL2-8B: InternViT-300M-448px + internlm2_5-7b-chat.
INTERNVL2_8B = Dims(image_size=448, vit_hidden=1024, vit_layers=24, vit_heads=16, vit_intermediate=4096,
                    hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab_size=92553)


def write_tokenizer(folder: Path, toy: bool) -> int:
    """A small byte-level BPE trained on the prompts' text, so that prompts have realistic token
    counts (the kit's toy tokenizer spends one token per UTF-8 byte: ~170 for the Chinese system
    message, where real InternVL2 tokenizers need a few dozen). Returns the vocabulary size."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(KIT_MODEL / name, folder / name)
    if toy:
        shutil.copy(KIT_MODEL / "tokenizer.json", folder / "tokenizer.json")
        return 1024
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from models.prompts import INTERNVL2_SYSTEM_MESSAGE

    specials = ["<unk>", "<s>", "</s>", "<|im_end|>", "<|im_start|>", "<img>", "</img>", "<IMG_CONTEXT>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [INTERNVL2_SYSTEM_MESSAGE, "system\n", "user\n", "assistant\n", *SUBJECTS,
              "Describe the picture in detail."] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    return int(tok.get_vocab_size())


def write_config(folder: Path, d: Dims, vocab: int, dtype: torch.dtype = torch.float32) -> None:
    cfg = json.loads((KIT_MODEL / "config.json").read_text())
    v, llm = cfg["vision_config"], cfg["llm_config"]
    cfg["torch_dtype"] = llm["torch_dtype"] = str(dtype).removeprefix("torch.")
    cfg.update(force_image_size=d.image_size, hidden_size=d.hidden, template="internlm2-chat",
               select_layer=-1, ps_version="v2", downsample_ratio=0.5)
    v.update(image_size=d.image_size, patch_size=14, hidden_size=d.vit_hidden,
             num_hidden_layers=d.vit_layers, num_attention_heads=d.vit_heads,
             intermediate_size=d.vit_intermediate, layer_norm_eps=1e-6, norm_type="layer_norm",
             qkv_bias=True, qk_normalization=False)
    llm.update(hidden_size=d.hidden, num_hidden_layers=d.layers, num_attention_heads=d.heads,
               num_key_value_heads=d.kv_heads, intermediate_size=d.intermediate, vocab_size=vocab,
               max_position_embeddings=d.max_position_embeddings, rms_norm_eps=1e-5,
               rope_theta=1000000, rope_scaling={"factor": 2.0, "type": "dynamic"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


Shape = tuple[tuple[int, ...], float, float]  # shape, scale, base


def weight_shapes(d: Dims, vocab: int) -> dict[str, Shape]:
    """Original key name -> (shape, std, mean), in the order the values are drawn."""
    def m(*shape: int) -> Shape:
        return shape, 0.02, 0.0

    def one(n: int) -> Shape:  # norm weights and layer scales
        return (n,), 0.02, 1.0

    c, ci, n_patch = d.vit_hidden, d.vit_intermediate, (d.image_size // 14) ** 2 + 1
    w = {"vision_model.embeddings.class_embedding": m(1, 1, c),
         "vision_model.embeddings.position_embedding": m(1, n_patch, c),
         "vision_model.embeddings.patch_embedding.weight": m(c, 3, 14, 14),
         "vision_model.embeddings.patch_embedding.bias": m(c)}
    for i in range(d.vit_layers):
        p = f"vision_model.encoder.layers.{i}."
        w |= {p + "ls1": one(c), p + "ls2": one(c), p + "attn.qkv.weight": m(3 * c, c),
              p + "attn.qkv.bias": m(3 * c), p + "attn.proj.weight": m(c, c), p + "attn.proj.bias": m(c),
              p + "mlp.fc1.weight": m(ci, c), p + "mlp.fc1.bias": m(ci),
              p + "mlp.fc2.weight": m(c, ci), p + "mlp.fc2.bias": m(c),
              p + "norm1.weight": one(c), p + "norm1.bias": m(c),
              p + "norm2.weight": one(c), p + "norm2.bias": m(c)}
    # pixel shuffle with downsample_ratio 0.5 puts 4 ViT features side by side: 4c inputs
    h, hd = d.hidden, d.hidden // d.heads
    w |= {"mlp1.0.weight": one(4 * c), "mlp1.0.bias": m(4 * c), "mlp1.1.weight": m(h, 4 * c),
          "mlp1.1.bias": m(h), "mlp1.3.weight": m(h, h), "mlp1.3.bias": m(h)}
    lm = "language_model.model."
    w |= {lm + "tok_embeddings.weight": m(vocab, h), lm + "norm.weight": one(h),
          "language_model.output.weight": ((vocab, h), 0.08, 0.0)}
    for i in range(d.layers):
        p = f"{lm}layers.{i}."
        w |= {p + "attention.wqkv.weight": m((d.heads + 2 * d.kv_heads) * hd, h),
              p + "attention.wo.weight": m(h, d.heads * hd),
              p + "feed_forward.w1.weight": m(d.intermediate, h),
              p + "feed_forward.w3.weight": m(d.intermediate, h),
              p + "feed_forward.w2.weight": m(h, d.intermediate),
              p + "attention_norm.weight": one(h), p + "ffn_norm.weight": one(h)}
    return w


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def plan_shards(shapes: dict[str, Shape], itemsize: int, shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, (shape, _, _) in shapes.items():
        nbytes = _numel(shape) * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def checkpoint_bytes(d: Dims, dtype: torch.dtype, vocab: int = 1024) -> int:
    item = torch.empty((), dtype=dtype).element_size()
    return sum(_numel(s) for s, _, _ in weight_shapes(d, d.vocab_size or vocab).values()) * item


def _marker(d: Dims, dtype: torch.dtype, toy: bool, seed: int) -> dict[str, object]:
    return {"dims": asdict(d), "dtype": str(dtype), "toy_tokenizer": toy, "seed": seed, "version": 1}


def existing_checkpoint(folder: Path, d: Dims, dtype: torch.dtype, *, toy_tokenizer: bool = False,
                        seed: int = 0) -> int | None:
    """Parameter count of a complete checkpoint this module wrote to ``folder`` with the same
    settings, else None."""
    try:
        found = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    params = found.pop("params", None)
    return int(params) if found == _marker(d, dtype, toy_tokenizer, seed) else None


def write_model(folder: Path, d: Dims, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                toy_tokenizer: bool = False, seed: int = 0, shard_bytes: int = 4_000_000_000,
                log: Callable[[str], None] | None = None) -> int:
    """Write config, tokenizer and weights into ``folder``; returns the parameter count."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in [folder / MARKER, *folder.glob("model*.safetensors"), folder / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    tok_vocab = write_tokenizer(folder, toy_tokenizer)
    # a larger model vocabulary (InternVL2-8B: 92553) is fine: ids the small tokenizer lacks are
    # generated by the random model but skipped when decoding
    vocab = d.vocab_size or tok_vocab
    if tok_vocab > vocab:
        raise ValueError(f"the tokenizer has {tok_vocab} tokens, more than the model's {vocab}")
    write_config(folder, d, vocab, dtype)
    shapes = weight_shapes(d, vocab)
    item = torch.empty((), dtype=dtype).element_size()
    shards = plan_shards(shapes, item, shard_bytes)
    total = sum(_numel(s) for s, _, _ in shapes.values())
    # CPU: float32 draws then a cast (the values bench_engine_batch.py always had); CUDA: drawn
    # directly in the target dtype on the GPU (seconds instead of minutes for 8B parameters).
    draw_dtype = torch.float32 if device == "cpu" else dtype
    g = torch.Generator(device=device).manual_seed(seed)
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    t0 = time.perf_counter()
    for i, (fname, keys) in enumerate(zip(names, shards, strict=True)):
        tensors = {}
        for k in keys:
            shape, scale, base = shapes[k]
            t = torch.randn(shape, generator=g, device=device, dtype=draw_dtype)
            tensors[k] = (t.mul_(scale).add_(base) if base else t.mul_(scale)).to(dtype).cpu()
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        if log is not None and len(shards) > 1:
            done = time.perf_counter() - t0
            log(f"  wrote {fname} ({sum(t.nbytes for t in tensors.values()) / 1e9:.2f} GB) in "
                f"{done:.1f} s so far; about {done / (i + 1) * len(shards):.0f} s for all {len(shards)}")
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total * item},
                 "weight_map": {k: n for n, keys in zip(names, shards, strict=True) for k in keys}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / MARKER).write_text(json.dumps({**_marker(d, dtype, toy_tokenizer, seed), "params": total}))
    return total
