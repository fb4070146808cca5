"""The fault scenarios: each submits its jobs to a :class:`FaultStack`, breaks one thing, and
returns the figures it measured.

Scale: ``CAPTIONQ_FAULTS_SCALE=full`` (``bash scripts/faults.sh``: 500 jobs, 20 SIGKILLs, 30 s
outages) or small (the default test run: 24 jobs, 2 SIGKILLs, 8 s / 5 s outages).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa

from core.db import Database
from jobs.tables import WebhookMessage
from tests.faults.harness import DEADLINE_AFTER_FAULT, FaultStack, Figures

if TYPE_CHECKING:
    from tests.faults.api_scenarios import ApiFigures

FULL = os.environ.get("CAPTIONQ_FAULTS_SCALE", "small") == "full"


def webhooks_pending(fs: FaultStack, ids: list[str], until: float) -> int:
    """Terminal webhook messages of ``ids`` not delivered yet, waiting until ``until``."""
    while True:
        db = Database(fs.settings)
        try:
            with db.session() as s:
                n = int(s.scalar(sa.select(sa.func.count()).select_from(WebhookMessage).where(
                    WebhookMessage.job_id.in_(ids), WebhookMessage.status != "delivered")) or 0)
        finally:
            db.dispose()
        if n == 0 or time.monotonic() > until:
            return n
        time.sleep(0.5)


# --- scenarios: each returns its figures --------------------------------------------------
N = 500 if FULL else 24


def baseline(fs: FaultStack) -> Figures:
    ids = fs.submit(N, tokens=24)
    figures = fs.measure("no fault (baseline)", ids, "none", time.monotonic(), extra_wait=540.0)
    fs.work_seconds = figures.recovered_seconds or 0.0
    return figures


def sigkill_gpu_workers(fs: FaultStack) -> Figures:
    kills = 20 if FULL else 2
    ids = fs.submit(N, tokens=24)
    fs.kill_gpu_workers(kills, gap=2.0 if FULL else 1.0)
    return fs.measure("SIGKILL GPU worker", ids, f"{kills} SIGKILLs, 2 GPU workers", time.monotonic())


def redis_restart(fs: FaultStack, aof: bool) -> Figures:
    fs.restart_redis(aof=aof)
    ids = fs.submit(N, tokens=24)
    time.sleep(0.5)
    fs.redis_crash(aof=aof)
    name = f"Redis SIGKILL + restart, {'AOF everysec' if aof else 'no persistence'}"
    figures = fs.measure(name, ids, "Redis down ~1 s", time.monotonic())
    if aof:
        fs.redis.kill()
        fs.redis.start(aof=False)
        time.sleep(2.0)
    return figures


def pg_restart(fs: FaultStack, mode: str) -> Figures:
    ids = fs.submit(N, tokens=24)
    time.sleep(0.5)
    fs.pg_restart(mode)
    return fs.measure(f"PostgreSQL restart -m {mode}", ids, "PostgreSQL down ~1 s", time.monotonic())


def s3_down(fs: FaultStack) -> Figures:
    seconds = 30.0 if FULL else 8.0
    ids = fs.submit(N, media=True)
    with fs.down(fs.s3.cut, fs.s3.restore, seconds):
        pass
    return fs.measure("S3 down", ids, f"S3 unreachable {seconds:.0f} s", time.monotonic())


def webhook_receiver_down(fs: FaultStack) -> Figures:
    seconds = 30.0 if FULL else 5.0
    fs.receiver.stop()
    ids = fs.submit(N)
    time.sleep(seconds)
    fs.receiver.start()
    end = time.monotonic()
    figures = fs.measure("webhook receiver down", ids, f"receiver down {seconds:.0f} s", end)
    figures.webhooks_pending = webhooks_pending(fs, ids, end + DEADLINE_AFTER_FAULT)
    return figures


SCENARIOS: dict[str, Callable[[FaultStack], Figures]] = {
    "baseline": baseline,
    "sigkill_gpu": sigkill_gpu_workers,
    "redis_no_aof": lambda fs: redis_restart(fs, aof=False),
    "redis_aof": lambda fs: redis_restart(fs, aof=True),
    "pg_fast": lambda fs: pg_restart(fs, "fast"),
    "pg_immediate": lambda fs: pg_restart(fs, "immediate"),
    "s3_down": s3_down,
    "webhook_down": webhook_receiver_down,
}


def record(figures: Figures | ApiFigures) -> None:
    """Append the figures to ``CAPTIONQ_FAULTS_REPORT`` (scripts/faults.sh makes the tables)."""
    path = os.environ.get("CAPTIONQ_FAULTS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(figures.line() + "\n")

