"""API and store benchmarks (the figures in bench/RESULTS_api.md).

    python bench/bench_api.py                       # all three
    python bench/bench_api.py --only post           # sustained POST /v1/jobs vs /healthz
    python bench/bench_api.py --only manifest --manifest-lines 100000
    python bench/bench_api.py --only batch-get --batch-jobs 1000000

Runs against the real services (PostgreSQL, Redis, the S3 server from scripts/services.sh): a
fresh database, Redis database 0 (its ``gpu*`` keys are deleted first) and a fresh bucket. The
API runs as its own uvicorn process (``api.app:app_from_env``), so its peak RSS is its own.

1. ``post``: N client threads POST small jobs for T seconds, then GET /healthz the same way:
   requests/s, p50, p99.
2. ``manifest``: a JSONL manifest of N lines in S3, POST /v1/batches with ``manifest_url``; time
   until the response (accepted) and until N caption messages sit in the Redis ``gpu`` queue
   (enqueued), and the API process's peak RSS (VmHWM) before and after.
3. ``batch-get``: N jobs bulk-inserted into one batch straight into PostgreSQL (COPY), then
   GET /v1/batches/{id} latency p50/p99.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import services  # noqa: E402

REDIS_DB = 0
IMAGE = {"type": "image", "url": "s3://bench-bucket/photos/0001.jpg"}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Api:
    def __init__(self, env: dict[str, str]) -> None:
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.app:app_from_env", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--no-access-log", "--log-level", "warning"],
            cwd=ROOT, env={**os.environ, **env},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("API did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hammer(base: str, key: str, method: str, path: str, body: Any, threads: int, seconds: float
           ) -> dict[str, float]:
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run() -> None:
        nonlocal errors
        mine: list[float] = []
        bad = 0
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.request(method, path, json=body)
                mine.append(time.perf_counter() - t0)
                bad += r.status_code >= 400
        with lock:
            lat.extend(mine)
            errors += bad

    ts = [threading.Thread(target=run) for _ in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.monotonic() - t0
    return {"requests": len(lat), "rps": len(lat) / wall, "p50_ms": pct(lat, 50) * 1000,
            "p99_ms": pct(lat, 99) * 1000, "errors": errors}


def gpu_queue_len(redis_url: str) -> int:
    import redis

    r = redis.Redis.from_url(redis_url)
    return sum(r.llen(k) for k in r.scan_iter("gpu*") if r.type(k) == b"list")


def bench_post(api: Api, key: str, threads: int, seconds: float) -> dict[str, Any]:
    body = {"media": [IMAGE], "prompts": ["Describe the image in detail."], "metadata": {"n": 1}}
    hammer(api.base, key, "POST", "/v1/jobs", body, threads, 2)  # warm-up
    post = hammer(api.base, key, "POST", "/v1/jobs", body, threads, seconds)
    health = hammer(api.base, key, "GET", "/healthz", None, threads, seconds)
    return {"threads": threads, "seconds": seconds, "post": post, "healthz": health}


def bench_manifest(
    api: Api, key: str, bucket: services.S3Bucket, redis_url: str, lines: int, window: int
) -> dict[str, Any]:
    import redis

    rows = (json.dumps({"media": [{"type": "image", "url": f"s3://bench-bucket/photos/{i:07d}.jpg"}],
                        "custom_id": f"row-{i:07d}", "metadata": {"row": i}}) for i in range(lines))
    data = ("\n".join(rows) + "\n").encode()
    url = bucket.put("manifests/bench.jsonl", data)
    r = redis.Redis.from_url(redis_url)
    for k in list(r.scan_iter("gpu*")):
        r.delete(k)
    before = {"rss_kb": rss_kb(api.proc.pid, "VmRSS"), "hwm_kb": rss_kb(api.proc.pid, "VmHWM"),
              "redis_bytes": int(r.info("memory")["used_memory"])}
    t0 = time.monotonic()
    body = {"manifest_url": url, "defaults": {"prompts": ["Caption."]}}
    resp = httpx.post(api.base + "/v1/batches", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=600)
    accepted = time.monotonic() - t0
    assert resp.status_code == 202, resp.text[:500]
    # With a dispatch window only the first window reaches the broker now (the sweeper, not
    # running here, would refill it as jobs start).
    expected = min(lines, window) if window > 0 else lines
    while gpu_queue_len(redis_url) < expected:
        if time.monotonic() - t0 > 600:
            raise RuntimeError("not enqueued after 600 s")
        time.sleep(0.1)
    enqueued = time.monotonic() - t0
    time.sleep(1.0)
    in_broker = gpu_queue_len(redis_url)
    return {"lines": lines, "dispatch_window": window, "messages_in_broker": in_broker,
            "broker_mb": (int(r.info("memory")["used_memory"]) - before["redis_bytes"]) / 2**20,
            "manifest_bytes": len(data), "accepted_s": accepted, "enqueued_s": enqueued,
            "api_rss_before_mb": before["rss_kb"] / 1024, "api_peak_rss_before_mb": before["hwm_kb"] / 1024,
            "api_peak_rss_after_mb": rss_kb(api.proc.pid, "VmHWM") / 1024,
            "counts": resp.json()["counts"]}


def bench_batch_get(api: Api, key: str, tenant_id: str, db_url: str, n: int, samples: int) -> dict[str, Any]:
    """Bulk-load ``n`` jobs into one batch with COPY, then time GET /v1/batches/{id}."""
    import psycopg

    from jobs import ids

    bid = ids.batch_id()
    request = json.dumps({"media": [IMAGE], "prompts": ["p"], "priority": 0, "ttl_seconds": 86400})
    pg = db_url.replace("postgresql+psycopg://", "postgresql://")
    t0 = time.monotonic()
    with psycopg.connect(pg) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO batches (id, tenant_id, status, total, queued, running, succeeded, failed, canceled,"
            " metadata, created_at) VALUES (%s, %s, 'running', %s, %s, 0, %s, 0, 0, '{}', now())",
            (bid, tenant_id, n, n // 2, n - n // 2),
        )
        cols = ("id, tenant_id, batch_id, seq, custom_id, status, priority, request, attempts,"
                " cancel_requested, metadata, created_at, expires_at")
        with cur.copy(f"COPY jobs ({cols}) FROM STDIN") as copy:
            for i in range(n):
                status = "queued" if i < n // 2 else "succeeded"
                copy.write_row((ids.job_id(), tenant_id, bid, i, f"c{i}", status, 0, request, 0, False, "{}",
                                "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"))
        cur.execute("ANALYZE jobs")
    load_s = time.monotonic() - t0
    lat = []
    with httpx.Client(base_url=api.base, headers={"Authorization": f"Bearer {key}"}) as c:
        for _ in range(20):
            c.get(f"/v1/batches/{bid}")
        for _ in range(samples):
            t = time.perf_counter()
            r = c.get(f"/v1/batches/{bid}")
            lat.append(time.perf_counter() - t)
            assert r.status_code == 200 and r.json()["counts"]["total"] == n
        t = time.perf_counter()
        first_page = c.get("/v1/jobs", params={"batch_id": bid, "limit": 100})
        list_ms = (time.perf_counter() - t) * 1000
        assert len(first_page.json()["data"]) == 100
    return {"jobs": n, "load_s": load_s, "samples": samples, "p50_ms": pct(lat, 50) * 1000,
            "p99_ms": pct(lat, 99) * 1000, "max_ms": max(lat) * 1000, "mean_ms": statistics.mean(lat) * 1000,
            "list_first_page_ms": list_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["post", "manifest", "batch-get"], action="append")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--manifest-lines", type=int, default=100_000)
    ap.add_argument("--dispatch-window", type=int, default=10_000,
                    help="CAPTIONQ_DISPATCH_WINDOW of the API (0 = every message at submission)")
    ap.add_argument("--batch-jobs", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    which = args.only or ["post", "manifest", "batch-get"]

    from core.migrate import upgrade
    from core.settings import Settings
    from tests.api.helpers import new_tenant

    services.ensure_services()
    db = services.create_database()
    bucket = services.create_bucket()
    redis_url = f"redis://{services.REDIS_HOST}:{services.REDIS_PORT}/{REDIS_DB}"
    env = {"CAPTIONQ_DATABASE_URL": db.url, "CAPTIONQ_BROKER_URL": redis_url, "CAPTIONQ_LOG_LEVEL": "WARNING",
           "CAPTIONQ_MAX_REQUEST_BYTES": str(64 * 1024 * 1024), "CAPTIONQ_RATE_LIMITS": "false",
           "CAPTIONQ_DISPATCH_WINDOW": str(args.dispatch_window), **bucket.env()}
    settings = Settings(database_url=db.url, broker_url=redis_url)
    upgrade(settings)
    key = new_tenant(settings, "bench")
    api = Api(env)
    results: dict[str, Any] = {}
    try:
        if "post" in which:
            results["post"] = bench_post(api, key.api_key, args.threads, args.seconds)
            print(json.dumps({"post": results["post"]}, indent=1), flush=True)
        if "manifest" in which:
            api.stop()
            api = Api(env)  # a fresh process: its peak RSS is this benchmark's
            results["manifest"] = bench_manifest(api, key.api_key, bucket, redis_url, args.manifest_lines,
                                                 args.dispatch_window)
            print(json.dumps({"manifest": results["manifest"]}, indent=1), flush=True)
        if "batch-get" in which:
            results["batch_get"] = bench_batch_get(api, key.api_key, key.tenant_id, db.url, args.batch_jobs,
                                                   args.samples)
            print(json.dumps({"batch_get": results["batch_get"]}, indent=1), flush=True)
    finally:
        api.stop()
        import redis

        r = redis.Redis.from_url(redis_url)
        for k in list(r.scan_iter("gpu*")):
            r.delete(k)
        services.drop_database(db)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
