"""What the rate limits cost on the API's hot path: with limits vs without, side by side.

    python bench/bench_ratelimit.py [--checks 3000] [--posts 400]

1. ``check``: the limiter alone, ``RateLimiter.check`` (tenant and key buckets, one EVALSHA of
   the token-bucket script on a local redis-server) against the same call with limits off;
   sequential calls on one event loop: p50 / p99 in µs.
2. ``post``: ``POST /v1/jobs`` end to end against two ``captionq serve`` processes on the same
   PostgreSQL database and Redis, one with limits and one without, requests alternating between
   them from one client so both see the same machine: p50 / p99 in ms and the ratio.

Runs against the real services (a fresh PostgreSQL database from scripts/services.sh, a
redis-server of its own). The tenant's plan allows far more than the benchmark sends: every
request is checked, none is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import services  # noqa: E402

JOB = {"prompts": ["Say hi."]}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def bench_check(settings, n: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from api.ratelimit import RateLimiter
    from jobs.plans import default_limits

    limits = default_limits(settings.model_copy(update={"default_requests_per_second": 1e9,
                                                        "default_burst": 10**9}))
    on, off = RateLimiter(settings), RateLimiter(settings.model_copy(update={"rate_limits": False}))
    out: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(200):  # connect, load the script
        await on.check("ten_bench", "key_bench", limits)
    for _ in range(n):
        for name, lim in (("on", on), ("off", off)):
            t0 = time.perf_counter()
            await lim.check("ten_bench", "key_bench", limits)
            out[name].append(time.perf_counter() - t0)
    await on.close()
    return {f"{k}_p50_us": round(statistics.median(v) * 1e6, 1) for k, v in out.items()} | {
        f"{k}_p99_us": round(pct(v, 99) * 1e6, 1) for k, v in out.items()}


def serve(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    from tests.api.helpers import free_port

    port = free_port()
    args = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("captionq serve did not start")
        time.sleep(0.1)


def bench_post(env: dict[str, str], api_key: str, n: int) -> dict[str, float]:
    procs = {"on": serve(env), "off": serve({**env, "CAPTIONQ_RATE_LIMITS": "false"})}
    lat: dict[str, list[float]] = {"on": [], "off": []}
    try:
        clients = {k: httpx.Client(base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
                   for k, (_, base) in procs.items()}
        for _ in range(50):  # warm both
            for c in clients.values():
                c.post("/v1/jobs", json=JOB)
        for _ in range(n):
            for name, c in clients.items():
                t0 = time.perf_counter()
                r = c.post("/v1/jobs", json=JOB)
                lat[name].append(time.perf_counter() - t0)
                assert r.status_code == 202, r.text
        assert "RateLimit" in r.headers or name == "off"
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(20)
    on, off = statistics.median(lat["on"]), statistics.median(lat["off"])
    return {"on_p50_ms": round(on * 1e3, 2), "off_p50_ms": round(off * 1e3, 2),
            "on_p99_ms": round(pct(lat["on"], 99) * 1e3, 2),
            "off_p99_ms": round(pct(lat["off"], 99) * 1e3, 2),
            "p50_ratio_on_off": round(on / off, 3), "p50_added_ms": round((on - off) * 1e3, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=3000)
    ap.add_argument("--posts", type=int, default=400)
    args = ap.parse_args()

    from cli.local import settings_env
    from core.db import Database
    from core.migrate import upgrade
    from core.settings import Settings
    from jobs.plans import assign_plan, save_plan
    from tests.api.helpers import new_tenant
    from tests.worker.stack import private_redis

    services.ensure_services()
    db = services.create_database()
    try:
        with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp)) as redis_url:
            settings = Settings(database_url=db.url, broker_url=redis_url, max_context_tokens=32768,
                                data_dir=Path(tmp) / "data")
            upgrade(settings)
            check = asyncio.run(bench_check(settings, args.checks))
            added = check["on_p50_us"] - check["off_p50_us"]
            print("check", check, f"p50 added by the limiter: {added:.0f} µs", flush=True)
            key = new_tenant(settings, "bench")
            store = Database(settings)
            with store.session() as s:
                save_plan(s, "bench-unlimited", {"requests_per_second": 1e9, "burst": 10**9})
                assign_plan(s, key.tenant_id, "bench-unlimited")
            store.dispose()
            env = {**settings_env(settings), "CAPTIONQ_LOG_LEVEL": "WARNING"}
            print("post", bench_post(env, key.api_key, args.posts), flush=True)
    finally:
        services.drop_database(db)


if __name__ == "__main__":
    main()
