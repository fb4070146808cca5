"""Rate limits and jobs in flight.

- exactness across two real ``captionq serve`` processes sharing one Redis: 200 POSTs in
  parallel against 50 per second with a burst of 50 get exactly 50 acceptances, the others 429
  with ``Retry-After`` that is enough to wait; Redis is paused (``CLIENT PAUSE WRITE``) until all
  200 requests wait on it, so the 200 decisions really race, within a few milliseconds;
- the same without the pause: never more than the burst plus what refilled meanwhile;
- jobs in flight: the plan's limit holds for jobs and batches, and ending jobs make room;
- the token bucket's arithmetic and header fields (pure).
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.ratelimit import Bucket, LocalBuckets, decide
from cli.local import settings_env
from core.db import Database
from core.settings import Settings
from jobs.plans import assign_plan, save_plan
from jobs.tables import Tenant
from tests.api import helpers
from tests.api.helpers import problem_of
from tests.worker.stack import private_redis

ROOT = Path(__file__).resolve().parents[2]
JOB = {"prompts": ["Say hi."]}


# --- pure ---------------------------------------------------------------------------------------
def test_the_local_bucket_takes_exactly_the_burst_then_refills() -> None:
    buckets = [Bucket("tenant", "t", 50.0, 50), Bucket("key", "k", 1000.0, 1000)]
    local = LocalBuckets()
    results = [local.take(buckets) for _ in range(60)]
    assert sum(ok for ok, _ in results) == 50 and all(ok for ok, _ in results[:50])
    ok, per_bucket = results[-1]
    d = decide(buckets, ok, per_bucket)
    assert d.headers["Retry-After"] == "1" and d.headers["RateLimit"].startswith('"tenant";r=0;t=1')
    assert d.headers["RateLimit-Policy"] == '"tenant";q=50;w=1, "key";q=1000;w=1'
    time.sleep(0.1)  # 5 tokens come back
    assert sum(local.take(buckets)[0] for _ in range(10)) in (5, 6)


def test_header_fields_report_the_tightest_bucket() -> None:
    buckets = [Bucket("tenant", "t", 100.0, 200), Bucket("key", "k", 10.0, 20)]
    d = decide(buckets, True, [(150, 0, 500_000), (3, 0, 1_700_000)])
    assert d.headers == {"RateLimit-Policy": '"tenant";q=200;w=2, "key";q=20;w=2',
                         "RateLimit": '"key";r=3;t=2'}
    refused = decide(buckets, False, [(0, 4_000, 2_000_000), (0, 2_500_000, 2_000_000)])
    assert refused.retry_after == 3 and refused.headers["Retry-After"] == "3"  # every bucket must refill


# --- real services ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of our own (broker and buckets): pausing it holds up no other test session."""
    with private_redis(Path(tmp_path_factory.mktemp("ratelimit-redis"))) as url:
        yield url


@pytest.fixture(scope="module")
def limited(api_settings: Settings, private: str) -> Settings:
    return api_settings.model_copy(update={"broker_url": private, "rate_limit_timeout_seconds": 60.0})


def _tenant_on_plan(settings: Settings, **limits: Any) -> Any:
    created = helpers.new_tenant(settings, f"rl-{uuid.uuid4().hex[:8]}")
    db = Database(settings)
    try:
        with db.session() as s:
            name = f"plan-{uuid.uuid4().hex[:8]}"
            save_plan(s, name, limits)
            assign_plan(s, created.tenant_id, name)
    finally:
        db.dispose()
    return created


def _serve(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = helpers.free_port()
    env = {**os.environ, **settings_env(settings), "CAPTIONQ_LOG_LEVEL": "WARNING"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port",
                                 str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def two_processes(limited: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    tmp = Path(tmp_path_factory.mktemp("ratelimit-api"))
    started = [_serve(limited, tmp / f"api-{i}.log") for i in range(2)]
    try:
        deadline = time.monotonic() + 90
        for proc, base in started:
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (tmp / "api-0.log").read_text()[-2000:]
                time.sleep(0.1)
        yield [base for _, base in started]
    finally:
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            proc.wait(30)


def _fire(bases: list[str], api_key: str, n: int) -> list[httpx.Response]:
    """``n`` POST /v1/jobs at once, spread over the servers, each on its own connection."""
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        clients = [httpx.AsyncClient(base_url=b, headers={"Authorization": f"Bearer {api_key}"}, timeout=120,
                                     limits=limits) for b in bases]
        try:
            return list(await asyncio.gather(*(clients[i % len(clients)].post("/v1/jobs", json=JOB)
                                               for i in range(n))))
        finally:
            for c in clients:
                await c.aclose()

    return asyncio.run(run())


def _others(got: list[httpx.Response]) -> list[tuple[int, str]]:
    """Answers other than 202 and 429, for the failure message."""
    return [(x.status_code, x.text[:300]) for x in got if x.status_code not in (202, 429)][:3]


def _limiter_clients(r: redis.Redis, *, waiting: bool = False) -> int:
    """The API processes' limiter connections (``waiting``: those whose script the pause holds)."""
    return sum(1 for c in r.client_list()
               if c.get("name") == "captionq-ratelimit" and (not waiting or "b" in c.get("flags", "")))


@pytest.mark.services
def test_200_parallel_posts_get_exactly_the_burst_across_two_processes(  # type: ignore[no-untyped-def]
        two_processes, limited, private) -> None:
    tenant = _tenant_on_plan(limited, requests_per_second=50.0, burst=50)
    warm = helpers.new_tenant(limited, f"rl-warm-{uuid.uuid4().hex[:8]}")
    for base in two_processes:  # one pooled limiter connection each; the tenant's key cached
        with helpers.client(base, warm.api_key) as c:
            assert c.post("/v1/jobs", json=JOB).status_code == 202
        with helpers.client(base, tenant.api_key) as c:
            assert c.get("/v1/jobs").status_code == 200
    r = redis.Redis.from_url(private, decode_responses=True)
    assert _limiter_clients(r) == 2
    got: list[httpx.Response] = []
    r.execute_command("CLIENT", "PAUSE", 90_000, "WRITE")
    try:
        thread = threading.Thread(target=lambda: got.extend(_fire(two_processes, tenant.api_key, 200)))
        thread.start()
        deadline = time.monotonic() + 90
        while _limiter_clients(r, waiting=True) < 200:  # each request's script waits on its own connection
            assert time.monotonic() < deadline and thread.is_alive(), _limiter_clients(r, waiting=True)
            time.sleep(0.05)
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    thread.join(120)
    statuses = sorted(x.status_code for x in got)
    assert statuses.count(202) == 50 and statuses.count(429) == 150, _others(got)
    accepted = [x for x in got if x.status_code == 202]
    left = sorted(int(x.headers["RateLimit"].split("r=")[1].split(";")[0]) for x in accepted)
    assert left == list(range(50))  # each token spent once
    for x in got:
        assert x.headers["RateLimit-Policy"] == '"tenant";q=50;w=1, "key";q=50;w=1'
        if x.status_code == 429:
            body = problem_of(x)
            assert body["code"] == "rate_limited"
            assert x.headers["Retry-After"] == "1" and x.headers["RateLimit"].startswith('"tenant";r=0;')
    # Retry-After is enough: after it, the next request goes through.
    time.sleep(int(got[-1].headers.get("Retry-After", "1")) if got[-1].status_code == 429 else 1)
    with helpers.client(two_processes[1], tenant.api_key) as c:
        assert c.post("/v1/jobs", json=JOB).status_code == 202

    # Without the pause: the burst plus what refilled while they were decided, never more.
    time.sleep(1.1)  # the bucket is full again
    t0 = float(".".join(map(str, r.time())))
    again = _fire(two_processes, tenant.api_key, 200)
    t1 = float(".".join(map(str, r.time())))
    n = sum(x.status_code == 202 for x in again)
    print(f"\nrate limit 50/s burst 50, 200 POSTs over 2 API processes: paused Redis {statuses.count(202)} "
          f"accepted, {statuses.count(429)} refused (Retry-After 1); unpaused {n} accepted in "
          f"{t1 - t0:.3f} s (bound {50 + math.ceil(50 * (t1 - t0))})")
    assert 50 <= n <= 50 + math.ceil(50 * (t1 - t0)), (n, t1 - t0)
    assert all(x.status_code in (202, 429) for x in again), _others(again)
    r.close()


@pytest.fixture(scope="module")
def server(limited: Settings) -> Iterator[helpers.LiveServer]:
    srv = helpers.start_server(limited)
    yield srv
    srv.stop()


@pytest.mark.services
def test_jobs_in_flight_are_capped_for_jobs_and_batches(server, limited) -> None:  # type: ignore[no-untyped-def]
    tenant = _tenant_on_plan(limited, requests_per_second=100.0, burst=100, max_jobs_in_flight=3)
    with helpers.client(server.base_url, tenant.api_key) as c:
        jobs = [c.post("/v1/jobs", json=JOB) for _ in range(3)]
        assert [j.status_code for j in jobs] == [202] * 3
        assert jobs[0].headers["RateLimit"].startswith('"tenant";r=99;')  # what is left
        assert "RateLimit" not in c.get("/v1/jobs").headers  # reads spend nothing
        over = c.post("/v1/jobs", json=JOB)
        body = problem_of(over)
        assert (over.status_code, body["code"]) == (429, "too_many_jobs_in_flight")
        assert over.headers["Retry-After"] == "5"
        assert (body["limit"], body["in_flight"]) == (3, 3)
        assert problem_of(c.post("/v1/batches", json={"jobs": [JOB]}))["code"] == "too_many_jobs_in_flight"
        assert c.post(f"/v1/jobs/{jobs[0].json()['id']}/cancel").status_code == 202  # ended: room for one
        two = c.post("/v1/batches", json={"jobs": [JOB, JOB]})
        assert problem_of(two)["code"] == "too_many_jobs_in_flight"
        assert c.post("/v1/batches", json={"jobs": [JOB]}).status_code == 202
        assert c.post("/v1/jobs", json=JOB).status_code == 429
        listed = c.get("/v1/jobs", params={"status": "queued"}).json()["data"]
        assert len(listed) == 3
        for j in listed:
            assert c.post(f"/v1/jobs/{j['id']}/cancel").status_code == 202
    db = Database(limited)
    try:
        with db.session() as s:
            assert s.get(Tenant, tenant.tenant_id).jobs_in_flight == 0  # type: ignore[union-attr]
    finally:
        db.dispose()
