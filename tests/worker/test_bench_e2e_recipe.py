"""bench/bench_e2e_recipe.py at toy sizes on the CPU: the photos, the model card's ``batch_chat``
recipe (the same answers as the engine, stopped by its deadline), and the dry-run path of
bench/gpu_session_e2e.sh — the service (API + a real worker process in the embedded local mode)
and the recipe on the same photos, side by side, with the results row."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.batch_chat_recipe import run_recipe, synthetic_photos
from bench.bench_e2e_recipe import main, questions
from bench.worker_bench_lib import prepare_checkpoint


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_photos_are_distinct_deterministic_and_full_hd(tmp_path: Path) -> None:
    first = synthetic_photos(tmp_path / "a", 3)
    again = synthetic_photos(tmp_path / "b", 3)
    assert [_digest(p) for p in first] == [_digest(p) for p in again]
    assert len({_digest(p) for p in first}) == 3
    with Image.open(first[0]) as img:
        assert img.format == "JPEG" and img.size == (1920, 1080)
    stamp = first[1].stat().st_mtime_ns
    assert synthetic_photos(tmp_path / "a", 3) == first and first[1].stat().st_mtime_ns == stamp  # kept


def test_recipe_answers_as_the_engine_and_stops_at_its_deadline(tmp_path: Path) -> None:
    from models.engine import ChatRequest, Engine
    from models.generation import GenerationParams
    from models.preprocess import load_image

    torch.set_num_threads(1)
    ckpt = prepare_checkpoint("tiny", tmp_path / "ckpt", "cpu")[0]
    files, qs = synthetic_photos(tmp_path / "photos", 4), questions(4)
    engine = Engine.load(ckpt, device="cpu", dtype="float32")
    # stop_at in the past: one chunk runs, no other starts
    run = run_recipe(engine, files, qs, batch=2, max_tiles=6, new_tokens=3, stop_at=0.0, log=lambda _: None)
    assert run.partial and run.images == 2 and run.chunks == 1 and run.tiles == 6 and run.output_tokens == 6
    pixels = [torch.from_numpy(load_image(f.read_bytes(), max_num=6).pixel_values) for f in files[:2]]
    ref = engine.generate_batch([ChatRequest(q, pixel_values=p, params=GenerationParams(max_new_tokens=3))
                                 for p, q in zip(pixels, qs, strict=False)])
    assert [run.texts[0], run.texts[1]] == [r.text for r in ref]  # float32: left padding changes nothing


@pytest.mark.slow
def test_tiny_dry_run_through_the_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "RESULTS.md"
    s = main(["--layout", "tiny", "--device", "cpu", "--images", "4", "--new-tokens", "2",
              "--workdir", str(tmp_path / "ckpt"), "--results", str(results)])
    svc, rec = s["service"], s["recipe"]
    assert not s["partial"] and svc["images"] == rec["images"] == 4
    assert svc["tiles"] == rec["tiles"] == 12  # 16:9 at max 6 tiles: 2 + the thumbnail
    assert s["identical"] == s["compared"] == 4  # float32 on the CPU: asserted by main too
    assert s["ratio"] == pytest.approx(svc["ips"] / rec["ips"])
    out = capsys.readouterr().out
    assert "ratio (service / recipe, images/s)" in out and svc["engine"].startswith("engine: 8 requests in ")
    rows = [ln for ln in results.read_text().splitlines() if ln.startswith("| 20")]
    assert len(rows) == 1 and "| tiny, float32 | 4 (3 per image, max 6) x 2 |" in rows[0]
