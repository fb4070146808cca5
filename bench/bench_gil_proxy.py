"""A GPU worker's GIL problem on a CPU: the engine alone, beside busy task threads, and in its own
process beside the same threads (why the engine runs in a process: worker/engine_client.py).

    python bench/bench_gil_proxy.py [--threads 8] [--calls 270] [--gpu-ms 20] [--steps 40]

The stand-in engine (:class:`ProxyEngine`) is what a GPU decoding step looks like to Python: per
step ``--calls`` tiny torch ops (``x + 1`` on a 16x64 tensor, a few µs each), each of which
releases the GIL and must win it back — the kernel launches — then a ``--gpu-ms`` wait with the
GIL released — the device computing, the host waiting on the sampled tokens — then, per row,
one ``on_token`` (which in the engine process crosses to the worker as a message) and one
``should_cancel``. Tiny torch
ops rather than ``time.sleep(0)``: they release and re-take the GIL exactly the way real launches
do, through torch's own bindings.

The task threads are the worker's Python work (JSON encoding and decoding of job-sized dicts,
like its database and broker traffic), never releasing the GIL for long. The switch interval is
the one a GPU worker sets (``gil_switch_interval_ms``, 0.2 ms). Three runs, same request:

- (a) ``alone``: the in-process batcher, nothing else running;
- (b) ``in-process``: the same beside ``--threads`` busy threads;
- (c) ``engine process``: :class:`worker.engine_client.EngineProcess` running the stand-in in a
  spawned process, the busy threads in this one (whose switch interval is then Python's
  default, as in a worker with an engine process; the engine process sets the short one).

It prints, for each, ms per step and steps/s as the engine ran them (its ``busy_seconds`` over its
decoding steps: the engine's own speed, the target) and as the caller saw them (submit to result,
every token delivered: this includes the worker's reader thread winning the GIL for each token
message), with the ratios (b)/(a) and (c)/(a) side by side.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from core.settings import Settings
from models.chat_types import ChatRequest, ChatResult, EngineInfo, Prepared
from models.generation import GenerationParams


class ProxyEngine:
    """Just enough of models.engine.Engine for a batcher: prepare, batch_key, generate_batch."""

    def __init__(self, calls: int, gpu_ms: float) -> None:
        torch.set_num_threads(1)
        self.calls = calls
        self.gpu_s = gpu_ms / 1000
        self.info = EngineInfo(name="gil-proxy", template="none", max_context=4096, image_size=448,
                               num_image_token=256, max_dynamic_patch=12, use_thumbnail=True,
                               dtype="float32", device="proxy", attn_implementation="none",
                               quantization="none", llm_family="proxy", vocab_size=1000)

    def prepare(self, request: ChatRequest) -> Prepared:
        return Prepared(request, request.question, [1] * 8, 0)

    def batch_key(self, prepared: Prepared) -> int:
        return 0

    def generate_batch(self, batch: list[Prepared]) -> list[ChatResult]:
        x = torch.zeros(16, 64)
        made = [0] * len(batch)
        live = [i for i, p in enumerate(batch) if p.request.params.max_new_tokens > 0]
        canceled: set[int] = set()
        while live:
            for _ in range(self.calls):  # the launches: each releases and re-takes the GIL
                x = x + 1.0
            if self.gpu_s:
                time.sleep(self.gpu_s)  # the device's share, GIL released
            for i in live:
                req = batch[i].request
                made[i] += 1
                if req.on_token is not None:
                    req.on_token(f"{made[i]} ")
                if req.should_cancel is not None and req.should_cancel():
                    canceled.add(i)
            live = [i for i in live if i not in canceled and made[i] < batch[i].request.params.max_new_tokens]
        return [ChatResult(text="".join(f"{k} " for k in range(1, n + 1)), prompt_tokens=8, output_tokens=n,
                           finish_reason="canceled" if i in canceled else "length", output_ids=[0] * n)
                for i, n in enumerate(made)]


def make_proxy(calls: int, gpu_ms: float) -> ProxyEngine:
    return ProxyEngine(calls, gpu_ms)


def busy(stop: threading.Event) -> None:
    """A task thread's Python work: encode and decode a job-sized document, again and again."""
    doc = {"id": "job_0123456789", "state": "running", "metrics": {f"k{i}": i * 0.5 for i in range(40)},
           "media": [{"url": f"s3://bucket/key-{i}.jpg", "tiles": 13} for i in range(8)]}
    while not stop.is_set():
        json.loads(json.dumps(doc))


def run_request(batcher: Any, steps: int) -> tuple[float, float]:
    """One request of ``steps`` tokens: seconds per step as the engine ran it (its
    ``busy_seconds`` over its decoding steps) and as the caller saw it (submit to result, every
    token delivered)."""
    tokens: list[str] = []
    busy0, steps0 = batcher.stats.busy_seconds, batcher.stats.decode_steps
    t0 = time.perf_counter()
    result = batcher.submit(ChatRequest(question="q", params=GenerationParams(max_new_tokens=steps),
                                        on_token=tokens.append)).result(timeout=600)
    took = time.perf_counter() - t0
    assert result.output_tokens == steps and "".join(tokens) == result.text
    engine = (batcher.stats.busy_seconds - busy0) / (batcher.stats.decode_steps - steps0)
    return engine, took / steps


def with_threads(n: int, fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    stop = threading.Event()
    threads = [threading.Thread(target=busy, args=(stop,), daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    try:
        return fn()
    finally:
        stop.set()
        for t in threads:
            t.join()


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=8, help="busy task threads")
    ap.add_argument("--calls", type=int, default=270, help="GIL-releasing torch calls per step")
    ap.add_argument("--gpu-ms", type=float, default=20.0, help="GIL-free wait per step (the device)")
    ap.add_argument("--steps", type=int, default=40, help="decoding steps per request")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (median)")
    ap.add_argument("--switch-ms", type=float, default=0.2, help="GIL switch interval (a GPU worker's)")
    a = ap.parse_args(argv)
    from models.batcher import Batcher
    from worker.engine_client import EngineProcess

    torch.set_num_threads(1)
    before = sys.getswitchinterval()
    sys.setswitchinterval(a.switch_ms / 1000)
    settings = Settings(batch_mode="static", gil_switch_interval_ms=a.switch_ms, torch_threads=1,
                        log_level="WARNING")
    load = functools.partial(make_proxy, a.calls, a.gpu_ms)

    def median(fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
        fn()  # warm-up
        runs = [fn() for _ in range(a.repeat)]
        return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

    out: dict[str, tuple[float, float]] = {}
    try:
        with Batcher(None, load=load, max_requests=16, wait_ms=0) as batcher:
            out["alone"] = median(lambda: run_request(batcher, a.steps))
            out["in_process"] = median(lambda: with_threads(a.threads, lambda: run_request(batcher, a.steps)))
        # A worker with an engine process leaves its own switch interval at Python's default;
        # only the engine process shortens it.
        sys.setswitchinterval(before)
        with EngineProcess.start(settings, load=load) as remote:
            _ = remote.engine
            out["engine_process"] = median(
                lambda: with_threads(a.threads, lambda: run_request(remote, a.steps)))
    finally:
        sys.setswitchinterval(before)
    base, base_seen = out["alone"]
    print(f"stand-in step: {a.calls} torch calls + {a.gpu_ms:g} ms GIL-free; {a.threads} busy threads; "
          f"switch interval {a.switch_ms:g} ms; {a.steps} steps, median of {a.repeat}")
    print(f"{'':<34}{'engine':>27}   {'seen by the caller':>27}")
    columns = f"{'ms/step':>9}{'steps/s':>9}{'vs alone':>9}"
    print(f"{'case':<34}{columns}   {columns}")
    for key, label in (("alone", "(a) engine alone"), ("in_process", "(b) engine thread beside threads"),
                       ("engine_process", "(c) engine process beside threads")):
        s, seen = out[key]
        print(f"{label:<34}{s * 1000:9.2f}{1 / s:9.1f}{base / s:9.2f}   "
              f"{seen * 1000:9.2f}{1 / seen:9.1f}{base_seen / seen:9.2f}")
    print(f"engine steps/s: (b)/(a) = {base / out['in_process'][0]:.2f}   "
          f"(c)/(a) = {base / out['engine_process'][0]:.2f}")
    return out


if __name__ == "__main__":
    main()
