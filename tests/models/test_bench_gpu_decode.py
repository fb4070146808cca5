"""bench/bench_gpu_decode.py at toy sizes on the CPU: the path bench/gpu_session_decode.sh runs
unattended on a GPU (checkpoint, the three step variants, both batchers, the results file)."""

from __future__ import annotations

from pathlib import Path

from bench.bench_gpu_decode import main


def test_tiny_run_on_cpu(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    out = main(["--layout", "tiny", "--device", "cpu", "--rows", "1,3", "--context", "40", "--steps", "3",
                "--images", "5", "--max-tiles", "1", "--new-tokens", "6", "--slots", "3",
                "--workdir", str(tmp_path / "ckpt"), "--results", str(results)])
    assert set(out["steps"]) == {1, 3} and not out["graphs"]
    assert all(v["static"] > 0 and v["eager"] > 0 for v in out["steps"].values())
    assert out["identical"] == 5  # float32 on the CPU: continuous and static answers agree
    assert out["continuous_ips"] > 0 and out["static_ips"] > 0
    text = results.read_text()
    assert "| 3 | nan |" in text and "ratio" in text
