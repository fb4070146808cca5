"""jobs.heartbeats.StatsWindow: the rates a heartbeat stores, from consecutive engine snapshots."""

from __future__ import annotations

from typing import Any

from jobs.heartbeats import StatsWindow


def snap(tokens: int, steps: int, rows: int, busy: float, slots: int = 8) -> dict[str, Any]:
    return {"slots": slots, "kv_budget_tokens": 4096, "tokens_generated": tokens, "decode_steps": steps,
            "rows_stepped": rows, "busy_seconds": busy, "requests": 0, "batches": 0}


def test_rates_over_each_interval() -> None:
    w = StatsWindow()
    first = w.update(snap(0, 0, 0, 0.0), now=100.0)
    assert first["engine"]["slots"] == 8
    assert first["tokens_per_s"] is None and first["batch_occupancy"] is None
    r = w.update(snap(600, 100, 600, 4.0), now=105.0)  # 6 rows a step of 8 slots
    assert r["window_seconds"] == 5.0 and r["tokens_per_s"] == 120.0
    assert r["batch_occupancy"] == 0.75 and r["busy_fraction"] == 0.8
    idle = w.update(snap(600, 100, 600, 4.0), now=110.0)
    assert idle["tokens_per_s"] == 0.0 and idle["busy_fraction"] == 0.0 and idle["batch_occupancy"] is None


def test_counters_that_went_back_start_a_new_window() -> None:
    w = StatsWindow()
    w.update(snap(500, 50, 100, 2.0), now=10.0)
    restarted = w.update(snap(20, 2, 4, 0.1), now=12.0)  # a new engine counts from 0
    assert restarted["tokens_per_s"] is None and restarted["engine"]["tokens_generated"] == 20
    assert w.update(snap(60, 12, 44, 0.6), now=14.0)["tokens_per_s"] == 20.0
