"""The fair-scheduling flood (issue 20, "Done when"), with real services: PostgreSQL, Redis, S3,
the API and a ``captionq worker --queues gpu,io --beat`` process.

1. **alone**: tenant A submits one batch of ``--jobs`` jobs (a manifest in S3) and runs alone;
   A's throughput (jobs started per second) is measured over ``--phase`` seconds;
2. **with B**: tenant B submits one interactive job (``POST /v1/jobs``) every ``--every``
   seconds for another ``--phase`` seconds; A's throughput is measured again, and B's queue wait
   (``started_at - created_at``) against the worker's mean batch time;
3. **3:1**: A gets weight 3, tenant C (weight 1) submits a batch of the same size; over
   ``--phase`` seconds with both backlogged, each tenant's share of the jobs started.

The worker's model is the tiny test checkpoint with its network call replaced by a fixed wait of
``--batch-seconds`` per batch (``bench/instant_model.py``): a stand-in for a GPU whose batches
of up to ``--slots`` jobs each take that long, so jobs cost what the service costs plus a known
device time, and a 100,000-job backlog is cheap to hold. ``dispatch_window`` is left to its
default (the live workers' slots).

    PYTHONPATH=. python bench/bench_fair_flood.py --jobs 100000 --phase 60

The short form runs in the suite (``tests/worker/test_fair_flood.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.db import Database  # noqa: E402
from jobs.tables import Job, Worker  # noqa: E402


@dataclass
class Flood:
    """A running flood stack and what it measured."""

    stack: Any
    db: Database
    redis: ExitStack
    keys: dict[str, Any] = field(default_factory=dict)  # tenant label -> CreatedKey
    batches: dict[str, str] = field(default_factory=dict)  # tenant label -> batch id


def start(tmp: Path, *, slots: int, batch_seconds: float) -> Flood:
    """The stack and its worker (the instant model waiting ``batch_seconds`` per batch)."""
    from bench import instant_model
    from tests.api import helpers
    from tests.worker.stack import build_stack, private_redis

    # A redis-server of our own: on the shared one's numbered databases another test session's
    # drain could take the flood's messages.
    tmp.mkdir(parents=True, exist_ok=True)
    redis = ExitStack()
    redis_url = redis.enter_context(private_redis(tmp))
    stack = build_stack(tmp, redis_url=redis_url, batch_mode="static", batch_max_requests=slots,
                        batch_wait_ms=0, dispatch_window=None, dispatch_window_min=2, heartbeat_seconds=1.0,
                        sweep_interval_seconds=2.0, outbox_grace_seconds=5.0)
    env = {"PYTHONPATH": f"{ROOT / 'bench' / 'bench_site'}:{ROOT}",
           **instant_model.instant_env(batch_seconds)}
    flood = Flood(stack, Database(stack.settings), redis)
    stack.start_worker(queues="gpu,io", beat=True, env=env)
    for label in ("A", "B", "C"):
        flood.keys[label] = helpers.new_tenant(stack.settings, f"flood-{label}-{time.monotonic_ns()}")
    return flood


def stop(flood: Flood) -> None:
    from tests.worker.stack import destroy_stack

    # The backlogs are left as they are: the database is dropped with the stack.
    flood.db.dispose()
    for w in flood.stack.workers:  # kept for a look after the run
        shutil.copy(w.log, flood.stack.tmp / f"kept-{w.log.name}")
    try:
        destroy_stack(flood.stack)
    finally:
        flood.redis.close()


def _client(flood: Flood, label: str) -> Any:
    from tests.api import helpers

    return helpers.client(flood.stack.server.base_url, flood.keys[label].api_key)


def submit_batch(flood: Flood, label: str, jobs: int) -> str:
    lines = "".join(json.dumps({"prompts": [f"Say {i}."], "custom_id": f"{label}-{i}"}) + "\n"
                    for i in range(jobs))
    url = flood.stack.put(f"flood-{label}-{time.monotonic_ns()}.jsonl", lines.encode())
    body = {"manifest_url": url, "defaults": {"generation": {"max_new_tokens": 1, "do_sample": False}}}
    with _client(flood, label) as c:
        r = c.post("/v1/batches", json=body, timeout=600)
    assert r.status_code == 202, r.text
    flood.batches[label] = r.json()["id"]
    return flood.batches[label]


def submit_job(flood: Flood, label: str) -> str:
    body = {"prompts": ["Say hi."], "generation": {"max_new_tokens": 1, "do_sample": False}}
    with _client(flood, label) as c:
        r = c.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def set_weight(flood: Flood, label: str, weight: float) -> None:
    from jobs.tenants import set_weight as store

    with flood.db.session() as s:
        store(s, flood.keys[label].tenant_id, weight)


def db_now(flood: Flood) -> datetime:
    with flood.db.session() as s:
        return s.scalar(sa.select(sa.func.now()))  # type: ignore[no-any-return]


def started_between(flood: Flood, label: str, t0: datetime, t1: datetime) -> int:
    with flood.db.session() as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(Job).where(
            Job.tenant_id == flood.keys[label].tenant_id, Job.started_at > t0, Job.started_at <= t1)) or 0)


def wait_started(flood: Flood, label: str, n: int, timeout: float) -> None:
    """Until ``n`` of the tenant's jobs have started."""
    deadline = time.monotonic() + timeout
    epoch = datetime(2000, 1, 1, tzinfo=db_now(flood).tzinfo)
    while started_between(flood, label, epoch, db_now(flood)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label}: fewer than {n} jobs started after {timeout} s\n"
                               f"{flood.stack.logs()}")
        time.sleep(0.2)


def mean_batch_seconds(flood: Flood) -> float | None:
    """The worker's mean batch time (model time over batches, from its heartbeat)."""
    with flood.db.session() as s:
        stats = s.scalars(sa.select(Worker.stats)).all()
    engines = [(st or {}).get("engine") or {} for st in stats]
    batches = sum(int(e.get("batches") or 0) for e in engines)
    busy = sum(float(e.get("busy_seconds") or 0) for e in engines)
    return busy / batches if batches else None


def jobs_of(flood: Flood, ids: list[str]) -> list[Any]:
    with flood.db.session() as s:
        return list(s.execute(sa.select(Job.id, Job.created_at, Job.started_at, Job.finished_at)
                              .where(Job.id.in_(ids))).all())


def a_jobs_started_while_waiting(flood: Flood, job: Any) -> int:
    """How many of A's jobs started while ``job`` (B's) waited: how far back in line it was."""
    return started_between(flood, "A", job.created_at, job.started_at)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def run(flood: Flood, *, jobs: int, phase: float, every: float, warmup: float) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": jobs, "phase_s": phase, "every_s": every,
                           "load_average_start": round(os.getloadavg()[0], 1)}
    t = time.monotonic()
    submit_batch(flood, "A", jobs)
    out["submit_s"] = round(time.monotonic() - t, 1)
    wait_started(flood, "A", 1, timeout=300)
    time.sleep(warmup)

    def a_alone() -> float:
        t0 = db_now(flood)
        time.sleep(phase)
        t1 = db_now(flood)
        return started_between(flood, "A", t0, t1) / (t1 - t0).total_seconds()

    alone_before = a_alone()

    b_ids: list[str] = []
    t0 = db_now(flood)
    end = time.monotonic() + phase
    while time.monotonic() < end:
        b_ids.append(submit_job(flood, "B"))
        time.sleep(every)
    t1 = db_now(flood)
    with_b = started_between(flood, "A", t0, t1) / (t1 - t0).total_seconds()
    # A alone again after B: the machine's load drifts (other processes share it), so "alone"
    # is measured on both sides of "with B".
    alone_after = a_alone()
    alone = (alone_before + alone_after) / 2
    deadline = time.monotonic() + max(30.0, phase)
    while time.monotonic() < deadline and any(j.finished_at is None for j in jobs_of(flood, b_ids)):
        time.sleep(0.2)
    b_jobs = [j for j in jobs_of(flood, b_ids) if j.started_at is not None]
    waits = [(j.started_at - j.created_at).total_seconds() for j in b_jobs]
    # Until the answer: the queue wait, then the wait for a batch inside the worker (its task
    # threads claim more jobs than one batch holds), then the batch itself.
    latencies = [(j.finished_at - j.created_at).total_seconds() for j in b_jobs if j.finished_at is not None]
    out.update(
        a_alone_jobs_per_s=round(alone, 2),
        a_alone_before_after=[round(alone_before, 2), round(alone_after, 2)],
        a_with_b_jobs_per_s=round(with_b, 2),
        a_throughput_ratio=round(with_b / alone, 3) if alone else None,
        b_jobs=len(b_ids), b_started=len(b_jobs),
        b_wait_p50_s=round(pct(waits, 50), 3) if waits else None,
        b_wait_p99_s=round(pct(waits, 99), 3) if waits else None,
        b_wait_max_s=round(max(waits), 3) if waits else None,
        b_latency_p50_s=round(pct(latencies, 50), 3) if latencies else None,
        b_latency_p99_s=round(pct(latencies, 99), 3) if latencies else None,
        b_a_jobs_ahead_max=max((a_jobs_started_while_waiting(flood, j) for j in b_jobs), default=None),
    )
    batch = mean_batch_seconds(flood)
    out["mean_batch_s"] = round(batch, 3) if batch else None
    out["b_wait_p99_over_batch"] = round(out["b_wait_p99_s"] / batch, 2) if batch and waits else None

    set_weight(flood, "A", 3)
    set_weight(flood, "C", 1)
    submit_batch(flood, "C", jobs)
    wait_started(flood, "C", 1, timeout=300)
    time.sleep(min(warmup, 2.0))
    t0 = db_now(flood)
    time.sleep(phase)
    t1 = db_now(flood)
    a, c = started_between(flood, "A", t0, t1), started_between(flood, "C", t0, t1)
    out.update(load_average_end=round(os.getloadavg()[0], 1), weighted_a_started=a, weighted_c_started=c,
               weighted_a_share=round(a / (a + c), 3) if a + c else None)
    return out


def report(r: dict[str, Any]) -> str:
    lines = [
        f"A alone: {r['a_alone_jobs_per_s']} jobs/s (before, after B: {r['a_alone_before_after']}); "
        f"with B: {r['a_with_b_jobs_per_s']} jobs/s "
        f"(ratio {r['a_throughput_ratio']})",
        f"B: {r['b_started']}/{r['b_jobs']} jobs started; queue wait p50 {r['b_wait_p50_s']} s, "
        f"p99 {r['b_wait_p99_s']} s, max {r['b_wait_max_s']} s; mean batch {r['mean_batch_s']} s "
        f"(p99 / batch = {r['b_wait_p99_over_batch']}); at most {r['b_a_jobs_ahead_max']} of A's jobs "
        f"started while one of B's waited; until the answer p50 {r.get('b_latency_p50_s')} s, "
        f"p99 {r.get('b_latency_p99_s')} s",
        f"weights 3:1: A started {r['weighted_a_started']}, C {r['weighted_c_started']} "
        f"(A's share {r['weighted_a_share']}, target 0.75)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000, help="jobs in A's (and C's) batch")
    ap.add_argument("--phase", type=float, default=60.0, help="seconds each phase is measured")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between B's jobs")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--slots", type=int, default=8, help="the worker's batch size")
    ap.add_argument("--batch-seconds", type=float, default=0.5, help="device time of one batch")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/captionq-fair-flood"))
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    flood = start(a.workdir, slots=a.slots, batch_seconds=a.batch_seconds)
    try:
        r = run(flood, jobs=a.jobs, phase=a.phase, every=a.every, warmup=a.warmup)
        r.update(slots=a.slots, batch_seconds=a.batch_seconds)
        print(report(r))
        print(json.dumps(r), flush=True)
    finally:
        stop(flood)
    return r


if __name__ == "__main__":
    main()
