"""Image features reused across requests with one ``vision_key`` (models.vision_cache): the ViT
runs once for them, counted by the engine's own vision path, and every answer equals the same
request run alone without a key (greedy, float32 on the CPU), in the static and the continuous
batcher (which also reuses the image prefix's keys and values: models.continuous)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.batcher import Batcher
from models.continuous import ContinuousBatcher
from models.engine import ChatRequest, Engine
from models.generation import GenerationParams
from models.vision_cache import VisionCache

QUESTIONS = ["What is in the picture?", "List three colours you see.", "Is it day or night?"]


@pytest.fixture(scope="module")
def engine(kit_dir: Path) -> Engine:
    torch.set_num_threads(1)
    return Engine.load(kit_dir / "models" / "internvl2-qwen2", device="cpu", dtype="float32")


def _pixels(tiles: int = 2) -> torch.Tensor:
    return torch.randn(tiles, 3, 448, 448, generator=torch.Generator().manual_seed(7))


def _req(question: str, pixels: torch.Tensor, key: str | None, new: int = 6) -> ChatRequest:
    return ChatRequest(question, pixel_values=pixels, num_patches_list=[int(pixels.shape[0])],
                       params=GenerationParams(max_new_tokens=new), vision_key=key)


def _alone(engine: Engine, pixels: torch.Tensor) -> list[list[int]]:
    return [engine.generate_batch([_req(q, pixels, None)])[0].output_ids for q in QUESTIONS]


@pytest.mark.parametrize("kind", ["static", "continuous"])
def test_three_answers_on_one_image_run_the_vit_once(engine: Engine, kind: str) -> None:
    pixels = _pixels()
    expected = _alone(engine, pixels)
    before = engine.vision_stats.tiles
    cls = ContinuousBatcher if kind == "continuous" else Batcher
    with cls(engine, max_requests=4, start=False) as batcher:
        # submitted before the engine thread starts: they join together, and one is longer
        futures = [batcher.submit(_req(q, pixels, f"job-{kind}")) for q in QUESTIONS]
        batcher.start()
        results = [f.result(timeout=120) for f in futures]
        assert engine.vision_stats.tiles - before == pixels.shape[0]
        assert batcher.stats.vision_tiles == engine.vision_stats.tiles
        assert sorted(r.vision_tiles for r in results) == [0, 0, int(pixels.shape[0])]
        assert [r.output_ids for r in results] == expected
        reused = engine.prefix_reused_tokens
        if kind == "continuous":  # the image prefix's keys and values were reused, not recomputed
            assert batcher.stats.prefix_reused_tokens > 2 * engine.info.num_image_token * pixels.shape[0]
        # later rounds of the same job, alone: features from the cache (no ViT pass); the first
        # of them alone stores the image prefix on the static path, the second starts from it
        for q, want in zip(QUESTIONS[:2], expected[:2], strict=True):
            later = batcher.submit(_req(q, pixels, f"job-{kind}")).result(timeout=120)
            assert later.vision_tiles == 0 and later.output_ids == want
        assert engine.vision_stats.tiles - before == pixels.shape[0]
        assert engine.prefix_reused_tokens - reused >= engine.info.num_image_token * pixels.shape[0]
        batcher.release_vision(f"job-{kind}")
        assert engine.vision_cache.get(f"job-{kind}", int(pixels.shape[0])) is None
        again = batcher.submit(_req(QUESTIONS[1], pixels, f"job-{kind}")).result(timeout=120)
        assert again.vision_tiles == pixels.shape[0] and again.output_ids == expected[1]
        batcher.release_vision(f"job-{kind}")


def test_requests_without_a_key_each_run_the_vit(engine: Engine) -> None:
    pixels = _pixels(1)
    before = engine.vision_stats.passes, engine.vision_stats.tiles
    results = engine.generate_batch([_req(q, pixels, None, new=2) for q in QUESTIONS])
    assert [r.vision_tiles for r in results] == [1, 1, 1]
    assert engine.vision_stats.tiles - before[1] == 3 and engine.vision_stats.passes - before[0] == 1


def test_cache_evicts_the_least_recently_used_and_checks_the_tile_count() -> None:
    cache = VisionCache(max_tiles=4)
    cache.put("a", torch.zeros(2, 1, 1))
    cache.put("b", torch.zeros(2, 1, 1))
    assert cache.get("a", 2) is not None  # a is now the most recent
    cache.put("c", torch.zeros(1, 1, 1))
    assert cache.get("b", 2) is None and cache.get("a", 2) is not None and cache.tiles == 3
    assert cache.get("a", 3) is None  # other pixels under the same key: not used
    cache.put("huge", torch.zeros(5, 1, 1))
    assert cache.get("huge", 5) is None and cache.tiles == 3
    cache.release("a")
    assert len(cache) == 1 and cache.tiles == 1


def test_prefix_cache_matches_exact_ids_and_is_bounded_by_positions() -> None:
    from models.vision_cache import PrefixCache

    def layers(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2))]

    cache = PrefixCache(max_tokens=5)
    cache.put("a", [1, 2, 3], layers(3))
    assert cache.get("a", [1, 2, 3]) is not None
    assert cache.get("a", [1, 2, 4]) is None and cache.get("a", [1, 2]) is None  # another start
    cache.put("b", [7, 8, 9], layers(3))  # 6 positions: "a" goes
    assert "a" not in cache and cache.get("b", [7, 8, 9]) is not None
    cache.put("c", list(range(6)), layers(6))  # larger than the whole cache: not kept
    assert "c" not in cache
    cache.release("b")
    assert len(cache) == 0
