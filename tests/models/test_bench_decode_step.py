"""bench/bench_decode_step.py at toy size on the CPU (what a GPU session runs on the 8B layout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_decode_step import main


def test_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = main(["--layout", "tiny", "--batches", "1,3", "--new-tokens", "3", "--repeat", "1",
                 "--workdir", str(tmp_path / "ckpt")])
    assert [(r["batch"], r["variant"]) for r in rows] == [
        (1, "batched pick"), (3, "batched pick"), (3, "batched pick + on_token"), (3, "row-by-row pick")]
    assert all(r["steps"] == 2 and 0 < r["ms_forward"] <= r["ms_step"] for r in rows)
    assert "batch 3 / batch 1 step time (row-by-row pick)" in capsys.readouterr().out
