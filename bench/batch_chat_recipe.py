"""The model card's ``batch_chat`` recipe on our converted model, and the synthetic photos that
bench/bench_e2e_recipe.py feeds to it and to the service.

The official InternVL2 card captions many images with::

    pixel_values = torch.cat([load_image(f, max_num=6) for f in files])
    responses = model.batch_chat(tokenizer, pixel_values, num_patches_list=[...], questions=[...],
                                 generation_config=dict(max_new_tokens=128, do_sample=False))

``batch_chat`` builds one query per image (automatic ``<image>\\n`` prefix, the template,
``<img><IMG_CONTEXT>…</img>`` expansion), tokenises them left-padded, and runs ONE static
``generate`` over the batch with the template's stop token as ``eos_token_id``: every row
decodes until the longest is done. :func:`run_chunk` is that, on the transformers
``InternVLForConditionalGeneration`` that ``Engine.load`` converts a checkpoint to:
``models.preprocess.load_image`` (the card's ``load_image``, same bytes), ``models.prompts``
(the card's query strings), left padding with the tokenizer's pad id, and
``model.generate(input_ids, attention_mask, pixel_values, max_new_tokens, do_sample=False)``.
Users of the card run it over chunks of ``B`` images, one chunk after another, reading and
tiling each chunk's files on the same thread (:func:`run_recipe`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models import prompts
from models.engine import Engine
from models.preprocess import load_image

WIDTH, HEIGHT = 1920, 1080


def synthetic_photos(folder: Path, n: int, width: int = WIDTH, height: int = HEIGHT) -> list[Path]:
    """``n`` distinct, deterministic ``width`` x ``height`` JPEGs (quality 90) in ``folder``:
    smooth colour fields (a 16 x 9 grid of random colours, bicubic-upscaled) plus a shared film
    grain shifted per image, so they decode and compress like photos rather than flat colour.
    Files already there (same name, written by an earlier run) are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo-{width}x{height}-{i:05d}.jpg" for i in range(n)]
    grain = np.random.default_rng(0).normal(0.0, 6.0, (height, width, 1)).astype(np.float32)

    def write(i: int) -> None:
        if paths[i].exists():
            return
        coarse = np.random.default_rng(i + 1).integers(0, 256, (9, 16, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC),
                          dtype=np.float32)
        pixels = np.clip(base + np.roll(grain, (i * 37) % height, axis=0), 0, 255).astype(np.uint8)
        tmp = paths[i].with_suffix(".tmp")  # renamed when complete: an interrupted run leaves no half file
        Image.fromarray(pixels).save(tmp, format="JPEG", quality=90)
        tmp.replace(paths[i])

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # Pillow and numpy release the GIL
        list(pool.map(write, range(n)))
    return paths


@dataclass
class RecipeRun:
    """What :func:`run_recipe` did: images and output tokens done, timed seconds, answers by index."""

    images: int = 0
    tiles: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    chunks: int = 0
    partial: bool = False
    texts: dict[int, str] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def run_chunk(engine: Engine, files: Sequence[Path], questions: Sequence[str], max_tiles: int,
              new_tokens: int) -> tuple[list[str], list[int], int]:
    """One ``batch_chat`` call: (answers, output tokens per row, tiles)."""
    model, tok = engine.model, engine.tokenizer
    weight = model.get_input_embeddings().weight
    info = engine.info
    pixels = [torch.from_numpy(load_image(f.read_bytes(), max_num=max_tiles, image_size=info.image_size,
                                          use_thumbnail=info.use_thumbnail).pixel_values) for f in files]
    num_patches_list = [int(p.shape[0]) for p in pixels]
    pixel_values = torch.cat(pixels).to(weight.device, weight.dtype)
    queries = prompts.build_batch_queries(engine.template, questions, num_patches_list,
                                          num_image_token=engine.spec.num_image_token)
    ids = [tok.encode(q) for q in queries]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):  # tokenizer.padding_side = 'left', as batch_chat sets it
        input_ids[row, width - len(x):] = torch.tensor(x)
        mask[row, width - len(x):] = 1
    out = model.generate(input_ids=input_ids.to(weight.device), attention_mask=mask.to(weight.device),
                         pixel_values=pixel_values, max_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=engine.stop_id, pad_token_id=tok.pad_id)
    answers, counts = [], []
    for row in out[:, width:].tolist():
        # a finished row is padded until the longest is done: its answer ends at the stop token
        n = row.index(engine.stop_id) + 1 if engine.stop_id in row else len(row)
        counts.append(n)
        answers.append(prompts.clean_response(engine.template, tok.decode(row[:n])))
    return answers, counts, sum(num_patches_list)


def run_recipe(engine: Engine, files: Sequence[Path], questions: Sequence[str], *, batch: int,
               max_tiles: int, new_tokens: int, stop_at: float | None = None,
               log: Callable[[str], None] = print) -> RecipeRun:
    """Chunks of ``batch`` images one after another, timed from the first file read to the last
    answer. ``stop_at`` (a ``time.perf_counter()`` value): no chunk starts that would, at the
    last chunk's pace, end after it (at least one chunk runs); the run is then ``partial``."""
    device = engine.model.get_input_embeddings().weight.device
    run = RecipeRun()
    _sync(device)
    t0 = time.perf_counter()
    for start in range(0, len(files), batch):
        c0 = time.perf_counter()
        answers, counts, tiles = run_chunk(engine, files[start:start + batch], questions[start:start + batch],
                                           max_tiles, new_tokens)
        _sync(device)
        now = time.perf_counter()
        run.texts.update({start + k: a for k, a in enumerate(answers)})
        run.images += len(answers)
        run.tiles += tiles
        run.output_tokens += sum(counts)
        run.chunks += 1
        run.seconds = now - t0
        log(f"  recipe: {run.images}/{len(files)} images, {run.seconds:.1f} s (this chunk {now - c0:.2f} s)")
        if stop_at is not None and run.images < len(files) and now + (now - c0) > stop_at:
            run.partial = True
            log(f"  recipe: stopping at the deadline after {run.images} of {len(files)} images")
            break
    return run
