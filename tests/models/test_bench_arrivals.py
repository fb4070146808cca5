"""bench/bench_arrivals.py at toy size on the CPU: capacity, a Poisson schedule per load level,
every mode's latencies and throughput (continuous batching too once models.continuous exists)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from bench.bench_arrivals import continuous_factory, main, percentile, poisson_schedule
from models.engine import ChatRequest


def test_poisson_schedule_is_fixed_by_its_seed() -> None:
    reqs = [ChatRequest(f"q{i}") for i in range(200)]
    a, b = poisson_schedule(reqs, 4.0, seed=3), poisson_schedule(reqs, 4.0, seed=3)
    assert [x.at for x in a] == [x.at for x in b] and a[0].at == 0.0
    gaps = [y.at - x.at for x, y in pairwise(a)]
    assert all(g > 0 for g in gaps) and 0.2 < sum(gaps) / len(gaps) < 0.3  # mean 1 / 4 requests/s
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0


def test_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = main(["--layout", "tiny", "--requests", "6", "--slots", "3", "--min-new", "2", "--max-new", "6",
                "--loads", "0.5,0.8", "--workdir", str(tmp_path / "ckpt")])
    printed = capsys.readouterr().out
    assert out["capacity"] > 0 and sorted(out["runs"]) == [0.5, 0.8]
    modes = ["static", "continuous"] if continuous_factory() is not None else ["static"]
    for runs in out["runs"].values():
        for mode in modes:
            r = runs[mode]
            assert 0 < r["p50"] <= r["p99"] and r["throughput"] > 0 and r["tokens_per_s"] > 0
            assert 0 < r["occupancy"] <= 1
    if len(modes) == 2:
        assert "continuous / static: p99" in printed and "ratios" in out["runs"][0.8]
    else:
        assert "continuous: not available" in printed
