"""Image preprocessing throughput: models.preprocess vs two baselines, on the kit's 12 images.

  python bench/bench_preprocess.py [--kit tests/data/conformance] [--max-num 12] [--rounds 7]
                                   [--results bench/RESULTS_preprocess.md]

Each method goes from the encoded file bytes to float32 pixel_values [tiles, 3, 448, 448]:
  ours      models.preprocess.load_image (decode, Pillow's bicubic resize reproduced bit for bit
            on compiled loops in parallel strips, the last pass writing normalised tiles through
            a lookup table; thumbnail overlapped)
  (a) card  the model card's recipe step by step, written out here: Image.open().convert('RGB'),
            dynamic_preprocess (candidate set, find_closest_aspect_ratio, PIL resize, PIL crop per
            tile, thumbnail), then per tile ToTensor + Normalize done with torch ops, torch.stack
  (b) HF    transformers' GotOcr2ImageProcessorPil (crop_to_patches, 448 px, ImageNet mean/std,
            bicubic; PIL backend, imports without torchvision)
The script asserts that ours is bit-identical to (a) on every image. (b) picks its grid with its
own rule, so its tile count can differ; it is compared for speed only.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import pil_resize
from models.preprocess import IMAGENET_MEAN, IMAGENET_STD, load_image

SIZE = 448


# --- (a) the model card, step by step ------------------------------------------------------------
def _card_closest(aspect: float, ratios: list[tuple[int, int]], w: int, h: int) -> tuple[int, int]:
    best_diff, best = float("inf"), (1, 1)
    for r in ratios:
        diff = abs(aspect - r[0] / r[1])
        if diff < best_diff:
            best_diff, best = diff, r
        elif diff == best_diff and w * h > 0.5 * SIZE * SIZE * r[0] * r[1]:
            best = r
    return best


def _card_dynamic_preprocess(image: Image.Image, max_num: int) -> list[Image.Image]:
    w, h = image.size
    ratios = sorted({(i, j) for n in range(1, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if 1 <= i * j <= max_num}, key=lambda x: x[0] * x[1])
    cols, rows = _card_closest(w / h, ratios, w, h)
    resized = image.resize((SIZE * cols, SIZE * rows))
    tiles = []
    for i in range(cols * rows):
        box = ((i % cols) * SIZE, (i // cols) * SIZE, (i % cols + 1) * SIZE, (i // cols + 1) * SIZE)
        tiles.append(resized.crop(box))
    if len(tiles) != 1:
        tiles.append(image.resize((SIZE, SIZE)))
    return tiles


_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


def card_load_image(data: bytes, max_num: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = []
    for tile in _card_dynamic_preprocess(image, max_num):
        tile = tile.convert("RGB") if tile.mode != "RGB" else tile  # T.Lambda
        if tile.size != (SIZE, SIZE):  # T.Resize((448, 448)): a no-op on these tiles
            tile = tile.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.array(tile, np.uint8, copy=True))  # T.ToTensor
        x = x.view(tile.size[1], tile.size[0], 3).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        out.append(x.sub_(_MEAN).div_(_STD))  # T.Normalize
    return torch.stack(out).numpy()


# --- (b) transformers --------------------------------------------------------------------------
def hf_processor(max_num: int) -> Callable[[bytes, int], np.ndarray]:
    from transformers import GotOcr2ImageProcessorPil

    proc = GotOcr2ImageProcessorPil(size={"height": SIZE, "width": SIZE}, image_mean=list(IMAGENET_MEAN),
                                    image_std=list(IMAGENET_STD), crop_to_patches=True, min_patches=1,
                                    max_patches=max_num)

    def run(data: bytes, max_num: int) -> np.ndarray:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        out = proc(images=image, return_tensors="np")
        return np.asarray(out["pixel_values"])

    return run


def ours(data: bytes, max_num: int) -> np.ndarray:
    return load_image(data, max_num).pixel_values


def _with_torch_threads(fn: Callable[[bytes, int], np.ndarray], n: int) -> Callable[[bytes, int], np.ndarray]:
    def run(data: bytes, max_num: int) -> np.ndarray:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn(data, max_num)
        finally:
            torch.set_num_threads(before)

    return run


def _ours_single(data: bytes, max_num: int) -> np.ndarray:
    return load_image(data, max_num, workers=1).pixel_values


def _rates(methods: dict[str, Callable[[bytes, int], np.ndarray]], datas: list[bytes], max_num: int,
           rounds: int) -> dict[str, tuple[float, float]]:
    """(images/s wall clock, images per CPU-second) per method, medians over rounds; methods are
    interleaved inside each round so that a change in machine load hits all of them alike. CPU
    time (all threads of the process) measures the work done, whatever the load."""
    for fn in methods.values():  # warm-up (imports, thread pool, caches)
        for d in datas:
            fn(d, max_num)
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            t, c = time.perf_counter(), time.process_time()
            for d in datas:
                fn(d, max_num)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    n = len(datas)
    return {name: (n / statistics.median(wall[name]), n / statistics.median(cpu[name])) for name in methods}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--kit", type=Path, default=root / "tests" / "data" / "conformance")
    ap.add_argument("--max-num", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--results", type=Path, default=None, help="write a Markdown summary here")
    args = ap.parse_args()
    files = sorted((args.kit / "images").iterdir())
    datas = [f.read_bytes() for f in files]

    tiles_ours, tiles_hf = 0, 0
    hf = hf_processor(args.max_num)
    for f, d in zip(files, datas, strict=True):
        a, b = ours(d, args.max_num), card_load_image(d, args.max_num)
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape, f.name
        assert np.array_equal(a, b), f"ours differs from the model card recipe on {f.name}"
        tiles_ours += a.shape[0]
        tiles_hf += hf(d, args.max_num).shape[0]
    print(f"bit-exact with the model card recipe on all {len(files)} images ({tiles_ours} tiles); "
          f"GotOcr2ImageProcessorPil makes {tiles_hf} tiles")

    torch_threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    measured = _rates({
        "ours": ours,
        "ours, resize in one thread": _ours_single,
        "(a) card, torch default threads": card_load_image,
        "(a) card, torch 1 thread": _with_torch_threads(card_load_image, 1),
        "(b) hf": hf,
    }, datas, args.max_num, args.rounds)
    # (a) is credited with its faster torch thread setting (on a busy machine OpenMP threads can
    # slow small elementwise ops down a lot)
    a_key = max(("(a) card, torch default threads", "(a) card, torch 1 thread"), key=lambda k: measured[k][0])
    rates = {
        "ours (models.preprocess.load_image)": measured["ours"],
        "ours, resize in one thread (workers=1)": measured["ours, resize in one thread"],
        f"(a) model card recipe, torch ToTensor+Normalize ({torch_threads} torch threads)":
            measured["(a) card, torch default threads"],
        "(a) model card recipe, torch ToTensor+Normalize (1 torch thread)":
            measured["(a) card, torch 1 thread"],
        "(b) transformers GotOcr2ImageProcessorPil": measured["(b) hf"],
    }
    r_a, r_b = measured["ours"][0] / measured[a_key][0], measured["ours"][0] / measured["(b) hf"][0]
    r_a1 = measured["ours, resize in one thread"][0] / measured[a_key][0]
    cpu_a = measured["ours"][1] / measured["(a) card, torch 1 thread"][1]
    cpu_b = measured["ours"][1] / measured["(b) hf"][1]
    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after the timed rounds"
    env = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({load}), torch threads "
           f"{torch.get_num_threads()}, resize workers {pil_resize.default_workers()}, Python "
           f"{platform.python_version()}, Pillow {Image.__version__}, numpy {np.__version__}, "
           f"torch {torch.__version__}")
    lines = [f"| {n} | {r:.1f} | {c:.1f} |" for n, (r, c) in rates.items()]
    print("| method | images/s | images per CPU-second |")
    for line in lines:
        print(line)
    print(f"speed-up vs (a) (its faster setting): {r_a:.2f}x (target >= 1.5x); vs (b): {r_b:.2f}x "
          f"(target >= 3x); single-threaded ours vs (a): {r_a1:.2f}x; work (CPU time) ratio vs (a) "
          f"1 thread {cpu_a:.2f}x, vs (b) {cpu_b:.2f}x")
    print(env)
    if args.results:
        # keep one line per run, so that a noisy machine shows as a spread rather than one number
        history = [ln for ln in (args.results.read_text(encoding="utf-8").splitlines()
                                 if args.results.exists() else []) if ln.startswith("| 20")]
        ours_r, a_r, b_r = measured["ours"][0], measured[a_key][0], measured["(b) hf"][0]
        history.append(f"| {time.strftime('%Y-%m-%d %H:%M')} | {load_before:.1f} | {ours_r:.1f} | "
                       f"{a_r:.1f} | {b_r:.1f} | {r_a:.2f}x | {r_b:.2f}x | {cpu_a:.2f}x | {cpu_b:.2f}x |")
        args.results.write_text("\n".join([
            "# Preprocessing benchmark",
            "",
            "The tables are from the latest run; every run is listed at the end.",
            "",
            f"Command: `python bench/bench_preprocess.py --max-num {args.max_num} --rounds {args.rounds} "
            f"--results {args.results}`",
            "",
            f"Input: the conformance kit's 12 images, max_num {args.max_num} ({tiles_ours} tiles in total), "
            "from file bytes to float32 pixel_values; median of the rounds.",
            f"Machine: {env}.",
            "",
            "| method | images/s (wall) | images per CPU-second |",
            "| --- | --- | --- |",
            *lines,
            "",
            f"Speed-up: **{r_a:.2f}x** vs (a) at its faster torch thread setting (target >= 1.5x), "
            f"**{r_b:.2f}x** vs (b) (target >= 3x). With the resize kept in one thread ours is "
            f"{r_a1:.2f}x (a). CPU time (all threads) per image: ours needs {cpu_a:.2f}x less than "
            f"(a) with 1 torch thread and {cpu_b:.2f}x less than (b).",
            f"Ours is bit-identical to (a) on all images (asserted by the script). (b) chooses its own "
            f"grid ({tiles_hf} tiles), so it is compared for speed only.",
            "",
            "Reading the numbers: every method does the same bicubic resize (ours reproduces "
            "Pillow's bytes exactly), and it is most of the work. Ours runs Pillow's integer "
            "arithmetic on compiled loops that the compiler vectorises (models/resample.py: a block "
            "of rows transposed for the width pass, whole rows for the height pass), whose last "
            "pass writes normalised tiles directly; the CPU-time column shows that work saving, "
            "independent of how many cores were free. Runs before 2026-11-26 16:30 used Pillow's "
            "own resize in threaded strips.",
            "",
            "## All runs",
            "",
            "| run | load before | ours img/s | (a) best img/s | (b) img/s | vs (a) | vs (b) "
            "| CPU vs (a) 1 thread | CPU vs (b) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *history,
            "",
        ]), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
