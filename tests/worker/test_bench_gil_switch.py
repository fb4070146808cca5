"""bench/bench_gil_switch.py runs (a few calls per interval) and restores the switch interval."""

from __future__ import annotations

import sys

from bench.bench_gil_switch import main


def test_short_run() -> None:
    before = sys.getswitchinterval()
    out = main(["--calls", "3"])
    assert sorted(out) == [0.05, 0.2, 1.0, 5.0] and all(us > 0 for us in out.values())
    assert sys.getswitchinterval() == before
