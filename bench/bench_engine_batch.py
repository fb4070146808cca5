"""Batched engine throughput vs one request at a time, same model and inputs (CPU by default).

    python bench/bench_engine_batch.py [--requests 16] [--new-tokens 48] [--hidden 512] ...

Writes a random-weight checkpoint in the *original* InternVL2 layout (InternViT + InternLM2 with
fused wqkv and dynamic-NTK rope, so the load path converts it like a real one) into a temporary
folder, with a small BPE tokenizer trained on the prompt text (``--toy-tokenizer``: the kit's
byte-level one, which makes prompts about 3x longer than real tokenizers would), loads it with
``Engine.load``, then times:

- one at a time: ``engine.generate_batch([r])`` for each request in turn;
- batched: every request submitted to a :class:`models.batcher.Batcher` (max 16 per batch) from
  its own thread, as the worker does, until all futures are done.

Each request: one tile (default 224x224 = 64 image tokens, so that one request alone takes about
1 s on 2 CPU cores; ``--image-size 448`` = InternVL2's 256), a distinct question, greedy,
``--new-tokens`` new tokens (the random model never emits the stop token, so every request
generates exactly that many). Both runs must produce identical token ids (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.batcher import Batcher  # noqa: E402
from models.engine import ChatRequest, Engine  # noqa: E402
from models.generation import GenerationParams  # noqa: E402

KIT_MODEL = ROOT / "tests" / "data" / "conformance" / "models" / "internvl2-internlm2"


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


def write_checkpoint(folder: Path, a: argparse.Namespace) -> int:
    vocab = write_tokenizer(folder, a.toy_tokenizer)
    cfg = json.loads((KIT_MODEL / "config.json").read_text())
    v = cfg["vision_config"]
    cfg["force_image_size"] = a.image_size
    v.update(image_size=a.image_size, hidden_size=a.vit_hidden, num_hidden_layers=a.vit_layers,
             num_attention_heads=a.vit_heads, intermediate_size=4 * a.vit_hidden)
    llm = cfg["llm_config"]
    llm.update(hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
               num_key_value_heads=a.kv_heads, intermediate_size=a.intermediate, vocab_size=vocab,
               max_position_embeddings=32768)
    cfg["hidden_size"] = a.hidden
    (folder / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(0)

    def r(*shape: int, scale: float = 0.02, base: float = 0.0) -> torch.Tensor:
        return base + scale * torch.randn(*shape, generator=g)

    c, n_patch, d = a.vit_hidden, (a.image_size // 14) ** 2 + 1, a.hidden // a.heads
    w = {"vision_model.embeddings.class_embedding": r(1, 1, c),
         "vision_model.embeddings.position_embedding": r(1, n_patch, c),
         "vision_model.embeddings.patch_embedding.weight": r(c, 3, 14, 14),
         "vision_model.embeddings.patch_embedding.bias": r(c)}
    for i in range(a.vit_layers):
        p = f"vision_model.encoder.layers.{i}."
        w |= {p + "ls1": r(c, base=1), p + "ls2": r(c, base=1), p + "attn.qkv.weight": r(3 * c, c),
              p + "attn.qkv.bias": r(3 * c), p + "attn.proj.weight": r(c, c), p + "attn.proj.bias": r(c),
              p + "mlp.fc1.weight": r(4 * c, c), p + "mlp.fc1.bias": r(4 * c),
              p + "mlp.fc2.weight": r(c, 4 * c), p + "mlp.fc2.bias": r(c),
              p + "norm1.weight": r(c, base=1), p + "norm1.bias": r(c),
              p + "norm2.weight": r(c, base=1), p + "norm2.bias": r(c)}
    w |= {"mlp1.0.weight": r(4 * c, base=1), "mlp1.0.bias": r(4 * c), "mlp1.1.weight": r(a.hidden, 4 * c),
          "mlp1.1.bias": r(a.hidden), "mlp1.3.weight": r(a.hidden, a.hidden), "mlp1.3.bias": r(a.hidden)}
    lm = "language_model.model."
    w |= {lm + "tok_embeddings.weight": r(vocab, a.hidden), lm + "norm.weight": r(a.hidden, base=1),
          "language_model.output.weight": r(vocab, a.hidden, scale=0.08)}
    for i in range(a.layers):
        p = f"{lm}layers.{i}."
        w |= {p + "attention.wqkv.weight": r((a.heads + 2 * a.kv_heads) * d, a.hidden),
              p + "attention.wo.weight": r(a.hidden, a.heads * d),
              p + "feed_forward.w1.weight": r(a.intermediate, a.hidden),
              p + "feed_forward.w3.weight": r(a.intermediate, a.hidden),
              p + "feed_forward.w2.weight": r(a.hidden, a.intermediate),
              p + "attention_norm.weight": r(a.hidden, base=1), p + "ffn_norm.weight": r(a.hidden, base=1)}
    save_file(w, str(folder / "model.safetensors"))
    return sum(t.numel() for t in w.values())


SUBJECTS = ["a harbour at dawn", "a red bicycle", "two cats on a sofa", "a mountain lake",
            "a busy market", "an old library", "a snowy street", "a bowl of fruit"]


def make_requests(n: int, new_tokens: int, image_size: int = 448) -> list[ChatRequest]:
    subjects = SUBJECTS
    g = torch.Generator().manual_seed(1)
    return [ChatRequest(f"Describe {subjects[i % len(subjects)]} in picture {i}.",
                        pixel_values=torch.randn(1, 3, image_size, image_size, generator=g),
                        params=GenerationParams(max_new_tokens=new_tokens)) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--image-size", type=int, default=224,
                    help="224 = 64 image tokens per tile (InternVL2 itself: 448 = 256)")
    ap.add_argument("--vit-hidden", type=int, default=64)
    ap.add_argument("--vit-layers", type=int, default=2)
    ap.add_argument("--vit-heads", type=int, default=4)
    ap.add_argument("--toy-tokenizer", action="store_true",
                    help="the kit's byte-level toy tokenizer (about 3x longer prompts)")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs of both modes (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        n_params = write_checkpoint(Path(tmp), a)
        engine = Engine.load(tmp, device="cpu", dtype="float32")
    reqs = make_requests(a.requests, a.new_tokens, a.image_size)
    prompt = engine.prepare(reqs[0]).prompt_tokens
    print(f"model: random InternViT(hidden {a.vit_hidden}, {a.vit_layers} layers) + "
          f"InternLM2(hidden {a.hidden}, {a.layers} layers, {a.heads}/{a.kv_heads} heads, "
          f"ffn {a.intermediate}, vocab {engine.info.vocab_size}); "
          f"{n_params / 1e6:.1f}M params, float32, {engine.info.attn_implementation}, "
          f"{torch.get_num_threads()} threads")
    print(f"requests: {a.requests} x (1 tile {a.image_size}px = {engine.info.num_image_token} image tokens, "
          f"~{prompt} prompt tokens, {a.new_tokens} new tokens, greedy)")
    engine.generate_batch(reqs[:2])  # warm-up
    singles, batches, same = [], [], True
    for _ in range(a.repeat):  # alternate, so that a noisy neighbour hits both modes alike
        t0 = time.perf_counter()
        single = [engine.generate_batch([r])[0] for r in reqs]
        singles.append(time.perf_counter() - t0)
        with Batcher(engine, max_requests=16, wait_ms=50) as batcher, ThreadPoolExecutor(a.requests) as pool:
            t0 = time.perf_counter()
            futures = list(pool.map(batcher.submit, reqs))
            batched = [f.result() for f in futures]
            batches.append(time.perf_counter() - t0)
        same = same and [s.output_ids for s in single] == [b.output_ids for b in batched]
    t_single, t_batch = statistics.median(singles), statistics.median(batches)
    print(f"one at a time: {t_single:.2f} s per {a.requests} requests (median of {a.repeat}), "
          f"{t_single / a.requests:.3f} s/request, {a.requests / t_single:.2f} requests/s")
    print(f"batched:       {t_batch:.2f} s per {a.requests} requests (median of {a.repeat}), "
          f"{a.requests / t_batch:.2f} requests/s (largest batch {batcher.stats.largest_batch})")
    print(f"ratio: {t_single / t_batch:.2f}x   identical ids: {same}   load average: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
