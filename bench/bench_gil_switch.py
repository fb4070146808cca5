"""What one small torch call costs on a thread that shares the GIL with a busy Python thread, by
the interpreter's switch interval (why a GPU worker shortens it: worker/runtime.py).

    python bench/bench_gil_switch.py [--calls 300]

Every torch call releases the GIL and takes it back. With another thread running Python, taking
it back waits until that thread is forced to let go, which Python does only every switch
interval (5 ms by default). A GPU worker's engine thread makes hundreds of such calls per
decoding step (kernel launches), while its task threads run Python (database writes, media
decoding). This times a call of a few µs (``a + 1`` on a 16x64 tensor) alone, then beside a thread
spinning in Python, at several switch intervals, and prints the slow-down against alone.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import torch


def per_call_us(a: torch.Tensor, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        a + 1.0
    return (time.perf_counter() - t0) / calls * 1e6


def beside_a_busy_thread(a: torch.Tensor, calls: int) -> float:
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    time.sleep(0.02)
    try:
        return per_call_us(a, calls)
    finally:
        stop.set()
        t.join()


def main(argv: list[str] | None = None) -> dict[float, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.randn(16, 64)
    default = sys.getswitchinterval()
    alone = min(per_call_us(x, 3000) for _ in range(3))
    print(f"alone: {alone:.1f} us per call")
    out = {}
    try:
        for ms in (5.0, 1.0, 0.2, 0.05):
            sys.setswitchinterval(ms / 1000)
            us = beside_a_busy_thread(x, a.calls)
            out[ms] = us
            print(f"switch interval {ms:4.2f} ms: {us:8.1f} us per call beside a busy thread = "
                  f"{us / alone:6.1f}x alone", flush=True)
    finally:
        sys.setswitchinterval(default)
    return out


if __name__ == "__main__":
    main()
