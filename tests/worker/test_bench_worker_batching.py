"""bench/bench_worker_batching.py at toy sizes on the CPU, in the embedded local mode: the path a
GPU session runs unattended (bench/gpu_session_worker.sh: no services there) keeps working —
checkpoint written and then reused, both modes through the real API and worker processes, the
batching-off mode stopped by ``--time-limit`` and its rate extrapolated, the results file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_worker_batching import main
from bench.worker_bench_lib import prepare_checkpoint

pytestmark = [pytest.mark.slow]


def test_tiny_local_run_with_a_time_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, results = tmp_path / "ckpt", tmp_path / "RESULTS.md"
    s = main(["--layout", "tiny", "--local", "--jobs", "4", "--new-tokens", "2", "--time-limit", "0",
              "--workdir", str(ckpt), "--results", str(results)])
    on, off = s["on"], s["off"]
    assert not on["partial"] and on["done"] == 4  # the batching mode is not limited
    # stopped after its first jobs, unless all 4 ended between two looks at the batch (a fast machine)
    assert (off["partial"] and 1 <= off["done"] < 4) or (not off["partial"] and off["done"] == 4)
    assert s["extrapolated"] == off["partial"]
    assert s["dtype"] == "float32" and s["stack"] == "local" and not s["reused"]
    assert s["compared"] == off["done"] and s["identical"] == s["compared"]  # fp32 on the CPU: asserted too
    assert s["ratio"] == pytest.approx(on["jobs_per_s"] / off["jobs_per_s"])
    out = capsys.readouterr().out
    # the batcher's closing line, read from the worker's log: 4 jobs + the warm-up ones
    assert on["engine"].startswith("engine: 8 requests in ") and on["engine"] in out
    rows = [ln for ln in results.read_text().splitlines() if ln.startswith("| 20")]
    assert len(rows) == 1 and "tiny, float32 | local | 4 x 2 |" in rows[0]
    if off["partial"]:
        assert "STOPPED at the time limit" in out and "(extrapolated)" in out
        assert f"(partial: {off['done']})" in rows[0] and "(extrapolated)" in rows[0]
    assert prepare_checkpoint("tiny", ckpt, "cpu")[2]  # a rerun reuses the checkpoint
