"""``GET /v1/workers`` against real PostgreSQL: a worker's heartbeat thread with an engine stats
source shows up with the rates it computed; a silent worker is listed as dead and left out of the
totals; every tenant sees the same fleet, and no key gets 401."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from cli import workers_cmd
from core.db import Database, utcnow
from jobs import heartbeats
from jobs.tables import Job

pytestmark = pytest.mark.services


class FakeEngine:
    """Counters as a busy engine advances them: every read, 10 more decoding steps of 4 rows
    (8 slots: occupancy 0.5) and 40 more tokens."""

    def __init__(self) -> None:
        self.reads = 0
        self.lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            n = self.reads
            self.reads += 1
        return {"batches": n, "requests": 4 * n, "largest_batch": 4, "oom_splits": 0, "busy_seconds": 0.0,
                "slots": 8, "kv_budget_tokens": 32768, "tokens_generated": 40 * n, "decode_steps": 10 * n,
                "rows_stepped": 40 * n}


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_live_and_dead_workers_with_their_rates(api_settings, api, api_b, anon) -> None:  # type: ignore[no-untyped-def]
    db = Database(api_settings)
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    live_id, dead_id = f"test-live:{tag}", f"test-dead:{tag}"
    engine = FakeEngine()
    hb = heartbeats.Heartbeat(db, live_id, 0.2, model="tiny-model", stats_source=engine.stats)
    job = api.post("/v1/jobs", json={"media": [{"type": "image", "url": "s3://bucket-a/photo.jpg"}]}).json()
    try:
        old = utcnow() - timedelta(seconds=api_settings.worker_dead_seconds + 5)
        heartbeats.beat(db, dead_id, model="tiny-model", now=old, stats={
            "engine": FakeEngine().stats(), "window_seconds": 5.0, "tokens_per_s": 99.0,
            "batch_occupancy": 0.25, "busy_fraction": 0.5})
        with db.session() as s:  # the claim's effect: the job runs on the live worker
            s.execute(sa.update(Job).where(Job.id == job["id"]).values(status="running", worker_id=live_id))

        def mine() -> dict[str, Any] | None:
            body = api.get("/v1/workers").json()
            rows = {w["id"]: w for w in body["data"]}
            if live_id in rows and rows[live_id]["tokens_per_s"] is not None:
                return {"body": body, "rows": rows}
            return None

        got = wait_for(mine)
        assert got, "the heartbeat thread's second beat (the first with rates) never showed"
        live, dead = got["rows"][live_id], got["rows"][dead_id]
        assert live["object"] == "worker" and live["status"] == "live" and live["model"] == "tiny-model"
        assert live["slots"] == 8 and live["kv_budget_tokens"] == 32768
        assert live["batch_occupancy"] == 0.5  # 40 rows over 10 steps over 8 slots, every interval
        # 40 tokens per interval of ~0.2 s (a slow beat makes it lower, never higher)
        assert live["window_seconds"] >= 0.19 and 0 < live["tokens_per_s"] <= 40 / 0.19
        assert live["tokens_per_s"] == pytest.approx(40 / live["window_seconds"], rel=0.01)
        assert live["engine"]["tokens_generated"] >= 40 and live["engine"]["slots"] == 8
        assert live["running_jobs"] == 1 and live["last_heartbeat_at"].endswith("Z")
        assert dead["status"] == "dead" and dead["tokens_per_s"] == 99.0 and dead["running_jobs"] == 0
        totals, rows = got["body"]["totals"], got["body"]["data"]
        # other workers may be live in a shared database; the dead one never counts
        live_rows = [w for w in rows if w["status"] == "live"]
        assert totals["live_workers"] == len(live_rows) >= 1 and totals["running_jobs"] >= 1
        assert totals["slots"] == sum(w["slots"] or 0 for w in live_rows)
        live_rate = sum(w["tokens_per_s"] or 0 for w in live_rows)
        assert totals["tokens_per_s"] == pytest.approx(live_rate, abs=0.01)
        others = api_b.get("/v1/workers").json()  # shared capacity: tenant B sees the same fleet
        assert {live_id, dead_id} <= {w["id"] for w in others["data"]}
        assert anon.get("/v1/workers").status_code == 401
        shown = workers_cmd.table(got["body"]).splitlines()  # what `captionq workers` prints
        assert shown[0].split()[:3] == ["ID", "STATUS", "MODEL"]
        live_line = next(line for line in shown if line.startswith(live_id))
        assert live_line.split()[1:5] == ["live", "tiny-model", "8", "32768"] and "50%" in live_line
        assert next(line for line in shown if line.startswith(dead_id)).split()[1] == "dead"
        assert shown[-1].startswith(f"{totals['live_workers']} live worker(s): {totals['slots']} slots")
    finally:
        hb.close()  # a clean shutdown: its row goes
        heartbeats.forget(db, dead_id)
        with db.session() as s:
            s.execute(sa.update(Job).where(Job.id == job["id"]).values(status="canceled", worker_id=None))
        db.dispose()
    assert live_id not in {w["id"] for w in api.get("/v1/workers").json()["data"]}
