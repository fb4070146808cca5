"""Several tasks per image against one task, and against one job per task, side by side.

    python bench/bench_tasks.py [--images 4] [--tasks 3] [--new-tokens 48] [--max-tiles 1]
        [--photo WxH] [--repeat 3] [--batch-mode continuous|static]

The worker's own code from the prepared media on: ``worker.prepare.prepare_items`` (decode, EXIF,
tiles) on a local file, then ``worker.pipeline.answer_job`` through a batcher (continuous by
default, as the worker runs it) whose engine thread loads the "small" random-weight checkpoint
of the worker benchmark (InternViT 64x2 + InternLM2 512x8, float32, CPU; written once into the
temporary folder). Only the database is absent (cancel polls answer "no").

For each image in turn (one item at a time: the cost of an image, not a throughput under load):

- **one**: one job with one prompt;
- **tasks**: one job with ``--tasks`` tasks of one prompt each (media prepared once, the ViT once);
- **jobs**: ``--tasks`` jobs of one prompt each, run at once on their own threads as a worker's
  task threads would (each prepares the media and runs the ViT).

Modes alternate within each repetition (a noisy neighbour hits all alike); the median over
``--repeat`` repetitions is reported, with the ratios to **one**. Every task's output must equal the
output of the job with its prompt alone (greedy; checked). The random model never stops early,
so every answer is ``--new-tokens`` tokens long.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.worker_bench_lib import LAYOUTS, count, prepare_checkpoint  # noqa: E402
from storage.config import StorageConfig  # noqa: E402
from worker.live import JobWatch  # noqa: E402
from worker.pipeline import answer_job  # noqa: E402
from worker.prepare import prepare_items  # noqa: E402
from worker.record import output_json  # noqa: E402

QUESTIONS = ["Describe the image.", "List the objects you see.", "What colours dominate?",
             "Is there a person?", "Where could this be?", "Write a short title."]


class NoDatabase:
    """What JobWatch asks the job store, answered without one: never canceled, text stored."""

    def is_cancel_requested(self, job_id: str) -> bool:
        return False

    def set_partial_text(self, job_id: str, text: str) -> bool:
        return True


def write_photos(folder: Path, n: int, size: tuple[int, int]) -> list[dict[str, Any]]:
    """``n`` distinct JPEG photos (smooth gradients plus noise) as request media items."""
    rng = np.random.default_rng(0)
    media = []
    w, h = size
    for i in range(n):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2 + 40 * i) % 256, (xx + yy) % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        path = folder / f"photo-{i}.jpg"
        path.write_bytes(buf.getvalue())
        media.append({"type": "image", "url": path.resolve().as_uri()})
    return media


def run_job(batcher: Any, storage: StorageConfig, media: dict[str, Any], req: dict[str, Any],
            job_id: str) -> dict[str, Any]:
    items = prepare_items([media], storage)
    watch = JobWatch(job_id, NoDatabase(), None, deadline=time.monotonic() + 3600)  # type: ignore[arg-type]
    try:
        return output_json(answer_job(batcher, req, items, watch, job_id))
    finally:
        watch.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--max-tiles", type=int, default=1, help="1: one 448 px tile (plus none)")
    ap.add_argument("--photo", default="1024x768", help="photo size WxH")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-mode", choices=["continuous", "static"], default="continuous")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    a = ap.parse_args()
    import torch

    from models.batcher import Batcher
    from models.continuous import ContinuousBatcher
    from models.engine import Engine

    folder, params, _, _ = prepare_checkpoint("small", None, "cpu")

    def load() -> Engine:
        if a.threads:
            torch.set_num_threads(a.threads)
        return Engine.load(folder, device="cpu", dtype="float32")

    cls = ContinuousBatcher if a.batch_mode == "continuous" else Batcher
    batcher = cls.loading(load, max_requests=16, wait_ms=20)
    engine = batcher.engine
    w, h = (int(v) for v in a.photo.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="captionq-bench-tasks-"))
    photos = write_photos(tmp, a.images, (w, h))
    storage = StorageConfig(media_root=tmp, local_files_allowed=True)
    for m in photos:
        m["max_tiles"] = a.max_tiles
    gen = {"max_new_tokens": a.new_tokens, "do_sample": False}
    questions = QUESTIONS[:a.tasks]
    one_req = {"prompts": [questions[0]], "generation": gen}
    tasks_req = {"tasks": [{"name": f"t{i}", "prompts": [q]} for i, q in enumerate(questions)],
                 "generation": gen}
    print(f"model: random {LAYOUTS['small'].label}, {count(params)} parameters, float32, CPU, "
          f"{batcher.__class__.__name__}, {torch.get_num_threads()} torch threads")
    print(f"work: {a.images} photos {w}x{h} JPEG, max_tiles {a.max_tiles}, {a.tasks} prompts of "
          f"{a.new_tokens} new tokens (greedy), {a.repeat} repetitions")
    run_job(batcher, storage, photos[0], one_req, "warm-up")
    times: dict[str, list[float]] = {"one": [], "tasks": [], "jobs": []}
    vit: dict[str, int] = {"one": 0, "tasks": 0, "jobs": 0}
    same = True
    together: dict[int, dict[str, Any]] = {}
    pool = ThreadPoolExecutor(a.tasks)
    for rep in range(a.repeat):
        for mode in ("one", "tasks", "jobs"):
            tiles0 = engine.vision_stats.tiles
            t0 = time.perf_counter()
            for i, photo in enumerate(photos):
                jid = f"{mode}-{rep}-{i}"
                if mode == "one":
                    run_job(batcher, storage, photo, one_req, jid)
                elif mode == "tasks":
                    together[i] = run_job(batcher, storage, photo, tasks_req, jid)
                else:
                    futures = [pool.submit(run_job, batcher, storage, photo,
                                           {"prompts": [q], "generation": gen}, f"{jid}-{k}")
                               for k, q in enumerate(questions)]
                    alone = [f.result() for f in futures]
                    same = same and all(together[i]["tasks"][f"t{k}"] == alone[k] for k in range(a.tasks))
            times[mode].append(time.perf_counter() - t0)
            vit[mode] = engine.vision_stats.tiles - tiles0
    pool.shutdown()
    batcher.close()
    med = {m: statistics.median(v) for m, v in times.items()}
    per = {m: med[m] / a.images for m in med}
    for m, label in (("one", "1 task"), ("tasks", f"{a.tasks} tasks, 1 job"), ("jobs", f"{a.tasks} jobs")):
        print(f"{label:>14}: {per[m]:.3f} s per image (median of {a.repeat}: "
              f"{', '.join(f'{t:.2f}' for t in times[m])} s for {a.images}), ViT tiles per image "
              f"{vit[m] / a.images:.0f}")
    print(f"ratio to one task: {a.tasks} tasks in one job {med['tasks'] / med['one']:.2f}x, "
          f"{a.tasks} separate jobs {med['jobs'] / med['one']:.2f}x; tasks vs jobs "
          f"{med['jobs'] / med['tasks']:.2f}x faster   identical answers: {same}   load average: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
