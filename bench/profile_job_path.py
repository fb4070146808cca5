"""Where the time of one instant-model job goes: the median timeline of ``--n`` sequential jobs
(``POST /v1/jobs`` → SSE ``done``, the same job as ``bench_worker_overhead.py``), from
timestamps taken in the client, the API and the worker (``bench/jobtrace.py``).

    python bench/profile_job_path.py [--n 60] [--batch-wait-ms N]

Prints, for each traced point (``>`` entry, ``<`` exit; ``#k`` = its k-th occurrence in a job),
its median time after the client started the POST, and the median gap to the previous point.
The hooks add a few microseconds per point; use bench_worker_overhead.py for the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import jobtrace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--model", choices=["instant", "tiny"], default="instant",
                    help="as in bench_worker_overhead.py")
    ap.add_argument("--batch-wait-ms", type=int, default=None)
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--api", choices=["process", "thread"], default="process",
                    help="as in bench_worker_overhead.py")
    ap.add_argument("--client", choices=["sse", "wait"], default="sse",
                    help="sse: POST then the SSE stream until done; wait: POST with Prefer: wait")
    ap.add_argument("--dump", type=int, default=None, help="also print every point of job K")
    a = ap.parse_args()
    from bench_worker_overhead import api_client, run_job

    from tests.worker.stack import build_stack, destroy_stack, private_redis

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.txt"
        os.environ["CAPTIONQ_TRACE_FILE"] = str(trace)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench" / "bench_site"), str(ROOT)])
        if a.model == "instant":
            import instant_model

            os.environ.update(instant_model.instant_env())
        jobtrace.install("api")
        body = {"prompts": ["Hi"], "generation": {"max_new_tokens": 1}}
        extra = {} if a.batch_wait_ms is None else {"batch_wait_ms": a.batch_wait_ms}
        if a.torch_threads:
            extra["torch_threads"] = a.torch_threads
        windows: list[tuple[float, float]] = []
        with private_redis(Path(tmp)) as url:
            stack = build_stack(Path(tmp), redis_url=url, **extra)
            try:
                stack.start_worker(queues="gpu,io")
                with api_client(stack, a.api) as c:
                    for i in range(a.n + 5):
                        t0 = time.perf_counter()
                        jobtrace.mark("client:start")
                        job = run_job(c, body, a.client)
                        jobtrace.mark("client:done")
                        t1 = time.perf_counter()
                        assert job["status"] == "succeeded", job
                        if i >= 5:
                            windows.append((t0, t1))
                        time.sleep(0.05)  # let stray work of this job settle before the next
            finally:
                destroy_stack(stack)
        lines = [ln.split() for ln in trace.read_text().splitlines() if ln.strip()]
    events = sorted((float(t), label, pid, thread) for label, pid, thread, t in lines)
    rel: dict[str, list[float]] = defaultdict(list)
    for t0, t1 in windows:
        seen: dict[str, int] = defaultdict(int)
        for t, label, _pid, _thread in events:
            if t0 - 1e-4 <= t <= t1 + 1e-4:
                seen[label] += 1
                key = f"{label}#{seen[label]}"
                rel[key].append(1000 * (t - t0))
    if a.dump is not None:
        t0, t1 = windows[a.dump]
        for t, label, pid, thread in events:
            if t0 - 1e-4 <= t <= t1 + 1e-4:
                print(f"{1000 * (t - t0):8.2f} ms  {label:<28} pid {pid} {thread}")
    rows = sorted(rel, key=lambda key: statistics.median(rel[key]))
    total = statistics.median([1000 * (t1 - t0) for t0, t1 in windows])
    print(f"{len(windows)} jobs, median POST -> done {total:.2f} ms")
    prev = 0.0
    for key in rows:
        m = statistics.median(rel[key])
        if len(rel[key]) < len(windows) // 2:
            continue  # a point most jobs do not pass
        print(f"{m:8.2f} ms  (+{m - prev:6.2f})  {key}  [n={len(rel[key])}]")
        prev = m


if __name__ == "__main__":
    main()
