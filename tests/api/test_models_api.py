"""``GET /v1/models`` against real PostgreSQL and Redis: the default model of a deployment
without a registry, a live worker's heartbeat (slots, revision, free slots) and its queue (jobs
queued in the store, messages in the broker), and what ``captionq models list`` prints."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from cli import models_cmd
from core.db import Database
from jobs import heartbeats
from tests.api.helpers import drain

pytestmark = pytest.mark.services


def engine_stats() -> dict[str, Any]:
    return {"batches": 0, "requests": 0, "largest_batch": 0, "oom_splits": 0, "busy_seconds": 0.0,
            "slots": 8, "kv_budget_tokens": 32768, "tokens_generated": 0, "decode_steps": 0,
            "rows_stepped": 0}


def test_the_default_model_with_its_worker_and_queue(api_settings, api, anon) -> None:  # type: ignore[no-untyped-def]
    drain(api_settings)
    name = api_settings.registry.default
    db = Database(api_settings)
    worker_id = f"test-models:{os.getpid()}-{time.monotonic_ns()}"
    hb = heartbeats.Heartbeat(db, worker_id, 0.2, model=name, stats_source=engine_stats,
                              about={"model_revision": "sha256:0123456789abcdef", "checkpoint": "x"})
    try:
        job = api.post("/v1/jobs", json={"prompts": ["Hi"]}).json()
        assert job["model"] == name and job["model_revision"] is None
        time.sleep(0.3)  # its message is published after the response
        body = api.get("/v1/models").json()
        assert body["object"] == "list" and body["default_model"] == name
        (m,) = body["data"]  # without CAPTIONQ_MODELS: the one model
        assert m["id"] == name and m["default"] and m["checkpoint"] == api_settings.model
        assert m["queue"] == f"gpu.{name}" and m["status"] == "available"
        mine = next(w for w in m["workers"] if w["id"] == worker_id)
        assert mine["model_revision"] == "sha256:0123456789abcdef" and mine["slots"] == 8
        assert mine["free_slots"] == 8 and "sha256:0123456789abcdef" in m["revisions"]
        # the database may be shared with other modules' jobs: at least this one is queued
        assert m["queued_jobs"] >= 1 and m["queue_messages"] >= 1 and m["oldest_queued_seconds"] >= 0.2
        assert anon.get("/v1/models").status_code == 401
        shown = models_cmd.table(body).splitlines()  # what `captionq models list` prints
        assert shown[0].split()[:2] == ["MODEL", "STATUS"]
        assert shown[1].split()[:2] == [f"{name}*", "available"]
    finally:
        hb.close()
        api.post(f"/v1/jobs/{job['id']}/cancel")
        drain(api_settings)
        db.dispose()
