"""Usage and quotas through a real worker: the usage totals equal the sum of the jobs' own
metrics (in total, per key, per model, per day), a job is counted once however often its
outcome is recorded, and a tenant past its monthly quota gets 403 while accepted work finishes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from core.db import Database
from jobs.plans import assign_plan, save_plan
from jobs.states import TERMINAL
from jobs.tables import Tenant
from jobs.usage import FIELDS
from tests.api import helpers
from tests.api.helpers import problem_of
from tests.worker.stack import Stack, build_stack, destroy_stack

pytestmark = [pytest.mark.services, pytest.mark.slow]

SHORT = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = build_stack(tmp_path_factory.mktemp("usage"))
    try:
        st.start_worker(queues="gpu,io")
        yield st
    finally:
        destroy_stack(st)


def _image(stack: Stack) -> dict[str, Any]:
    return {"type": "image", "url": stack.put(f"usage/{uuid.uuid4().hex}.png", helpers.png_bytes((96, 64))),
            "max_tiles": 2}


def _ended(stack: Stack, api_key: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with helpers.client(stack.server.base_url, api_key) as c:
        ids = []
        for body in bodies:
            r = c.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        out = []
        for job_id in ids:
            deadline = time.monotonic() + 120
            while (job := c.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json())["status"] not in TERMINAL:
                assert time.monotonic() < deadline, (job, stack.logs())
            out.append(job)
    return out


def _expected(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(FIELDS, 0)
    for j in jobs:
        m = j["metrics"] or {}
        out["jobs"] += 1
        for f in ("images", "frames", "tiles", "input_tokens", "output_tokens"):
            out[f] += m.get(f, 0)
        out["gpu_seconds"] += m.get("engine_seconds", 0.0)
    return out


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    for f in FIELDS:
        assert got[f] == pytest.approx(want[f], abs=2e-3), (f, got, want)


def test_usage_totals_equal_the_sum_of_the_jobs_metrics(stack: Stack) -> None:
    with stack.client() as c:
        second = c.post("/v1/keys", json={"scopes": ["submit", "read"], "name": "second"}).json()
    first_jobs = _ended(stack, stack.api_key, [
        {"media": [_image(stack)], "prompts": ["Describe."], "generation": SHORT},
        {"media": [_image(stack), _image(stack)], "prompts": ["Compare."], "generation": SHORT},
        # fails: ends without running, one job and nothing else
        {"media": [{"type": "image", "url": f"s3://{stack.bucket.bucket}/missing.png"}],  # type: ignore[union-attr]
         "prompts": ["?"], "generation": SHORT},
    ])
    second_jobs = _ended(stack, second["api_key"], [{"prompts": ["Say hi."], "generation": SHORT}])
    everything = first_jobs + second_jobs
    assert [j["status"] for j in everything] == ["succeeded", "succeeded", "failed", "succeeded"]
    want = _expected(everything)
    assert want["images"] == 3 and want["input_tokens"] > 0 and want["output_tokens"] > 0  # not vacuous
    with stack.client() as c:
        usage = c.get("/v1/usage").json()
        _same(usage["total"], want)
        by_key = {row["key"]: row for row in c.get("/v1/usage", params={"group_by": "key"}).json()["data"]}
        assert set(by_key) == {"key_" + stack.api_key.split("_")[2], second["id"]}
        _same(by_key[second["id"]], _expected(second_jobs))
        by_model = c.get("/v1/usage", params={"group_by": "model"}).json()["data"]
        assert {r["model"] for r in by_model} == {"internvl2-internlm2", None}  # None: the failed job
        today = datetime.now(UTC).date().isoformat()
        by_day = c.get("/v1/usage", params={"group_by": "day", "from": today, "to": today}).json()["data"]
        assert len(by_day) == 1 and by_day[0]["day"] == today
        _same(by_day[0], want)
        old = c.get("/v1/usage", params={"from": "2000-01-01", "to": "2000-01-31"}).json()
        assert old["total"]["jobs"] == 0
        assert problem_of(c.get("/v1/usage", params={"from": "yesterday"}))["status"] == 422
    # Recording an outcome again (a redelivered message) changes no row, so counts nothing.
    service = helpers.service(stack.settings)
    try:
        done = first_jobs[0]
        assert service.succeed_job(done["id"], {"text": "again"}, {"images": 99}, attempt=1) is None
        assert service.fail(done["id"], "internal", "late", attempt=1) is None
        with service.db.session() as s:
            assert s.get(Tenant, stack.tenant_id).jobs_in_flight == 0  # type: ignore[union-attr]
    finally:
        service.db.dispose()
    with stack.client() as c:
        _same(c.get("/v1/usage").json()["total"], want)


def test_past_the_quota_new_work_is_refused_and_accepted_work_finishes(stack: Stack) -> None:
    tenant = helpers.new_tenant(stack.settings, f"quota-{uuid.uuid4().hex[:8]}")
    db = Database(stack.settings)
    try:
        with db.session() as s:
            plan = f"one-image-{uuid.uuid4().hex[:6]}"
            save_plan(s, plan, {"requests_per_second": 100.0, "burst": 100, "monthly_images": 1})
            assign_plan(s, tenant.tenant_id, plan)
    finally:
        db.dispose()
    body = {"media": [_image(stack)], "prompts": ["Describe."], "generation": SHORT}
    ended = _ended(stack, tenant.api_key, [body, body])  # both accepted while nothing was used
    assert [j["status"] for j in ended] == ["succeeded", "succeeded"]  # ran to the end past the quota
    with helpers.client(stack.server.base_url, tenant.api_key) as c:
        refused = problem_of(c.post("/v1/jobs", json=body))
        assert (refused["status"], refused["code"]) == (403, "quota_exceeded")
        assert (refused["quota"], refused["limit"], refused["used"]) == ("images", 1, 2)
        assert problem_of(c.post("/v1/batches", json={"jobs": [body]}))["code"] == "quota_exceeded"
        assert c.get("/v1/usage").json()["total"]["images"] == 2
