"""bench/bench_gil_proxy.py runs its three cases (a few short steps) and restores the switch
interval."""

from __future__ import annotations

import sys

from bench.bench_gil_proxy import main


def test_short_run() -> None:
    before = sys.getswitchinterval()
    out = main(["--threads", "2", "--calls", "5", "--gpu-ms", "1", "--steps", "3", "--repeat", "1"])
    assert sorted(out) == ["alone", "engine_process", "in_process"]
    assert all(s > 0 for r in out.values() for s in r)
    assert sys.getswitchinterval() == before
