"""Webhook reliability under a receiver outage: every event arrives, none is processed twice.

    python bench/webhook_outage.py [--jobs 150] [--outage 10] [--schedule 1,2,4,8,16]

Needs the test services (``bash scripts/services.sh``): it makes a scratch PostgreSQL database
and Redis database, runs a real ``captionq worker --queues io --beat`` process, and receives with
``examples/webhook_receiver.py`` (verification with ``standardwebhooks``, dedupe by webhook-id in
SQLite, which survives the receiver's restart).

Phases, each job emitting ``job.running`` and ``job.succeeded`` through the jobs service (the
calls the GPU worker makes):

1. receiver up;
2. receiver **down** (its port closed) for ``--outage`` seconds while more jobs run;
3. receiver back, but **slow**: for a while it processes each message and then answers after the
   attempt timeout, so captionq records a failure and sends the message again — the receiver
   sees real duplicates, which its dedupe must absorb;
4. receiver normal until every message is delivered (or ``--deadline`` passes).

Prints the figures (and one JSON line) that RELIABILITY.md quotes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.db import Database  # noqa: E402
from core.migrate import upgrade  # noqa: E402
from core.settings import Settings  # noqa: E402
from jobs.queue import Publisher  # noqa: E402
from jobs.service import JobService  # noqa: E402
from jobs.tables import WebhookAttempt, WebhookMessage  # noqa: E402
from jobs.tenants import create_api_key  # noqa: E402
from tests.support import services  # noqa: E402
from tests.webhooks.stack import free_port, start_worker  # noqa: E402


def load_example() -> Any:
    path = ROOT / "examples" / "webhook_receiver.py"
    spec = importlib.util.spec_from_file_location("webhook_receiver", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.verified_posts = 0  # requests that passed verification (duplicates included)
        self.processed: Counter[str] = Counter()  # webhook-id -> times the handler ran
        self.slow_until = 0.0  # while time.monotonic() < this, answer after the attempt timeout
        self.slow_delay = 0.0


def make_receiver(example: Any, secret: str, port: int, dedupe_path: str, counts: Counts) -> Any:
    class CountingDeduper(example.Deduper):  # type: ignore[misc, name-defined]
        def first_time(self, msg_id: str) -> bool:
            with counts.lock:
                counts.verified_posts += 1
            return bool(super().first_time(msg_id))

    def handle(msg_id: str, event: dict[str, Any]) -> None:
        with counts.lock:
            counts.processed[msg_id] += 1
        if time.monotonic() < counts.slow_until:
            time.sleep(counts.slow_delay)  # processed, but the answer comes too late

    server = example.make_server([secret], handle, port=port, deduper=CountingDeduper(dedupe_path))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def stop(server: Any) -> None:
    server.shutdown()
    server.server_close()


def run_jobs(service: JobService, tenant_id: str, url: str, n: int) -> list[str]:
    from jobs.requests import RequestLimits, normalize_job_request

    class Checker:  # the API's URL checks are not what this measures
        def webhook(self, u: str) -> str:
            return u

        def media(self, u: str, kind: str) -> str:
            return u

        def manifest(self, u: str) -> str:
            return u

        def output(self, u: str) -> str:
            return u

    ids = []
    for i in range(n):
        req = normalize_job_request(
            {"prompts": [f"job {i}"], "webhook": {"url": url, "events": ["job.running", "job.succeeded"]}},
            Checker(), RequestLimits(),
        )
        job = service.submit(tenant_id, req)
        claimed = service.start(job.id)
        assert claimed is not None
        service.succeed(job.id, {"text": f"caption {i}", "rounds": []}, attempt=claimed.attempt)
        ids.append(job.id)
    return ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=150, help="jobs per phase (2 messages each)")
    p.add_argument("--outage", type=float, default=10.0, help="seconds the receiver is down")
    p.add_argument("--slow", type=float, default=4.0, help="seconds the receiver answers too late")
    p.add_argument("--schedule", default="1,2,4,8,16", help="CAPTIONQ_WEBHOOK_RETRY_SCHEDULE")
    p.add_argument("--timeout", type=float, default=1.0, help="CAPTIONQ_WEBHOOK_TIMEOUT_SECONDS")
    p.add_argument("--deadline", type=float, default=120.0)
    p.add_argument("--kill-worker", action="store_true",
                   help="SIGKILL the io worker in the middle of the outage and start a new one: the retry "
                        "wake-ups it held are lost, and the sweeper must find the messages")
    args = p.parse_args()

    pg = services.create_database()
    tmp = Path(tempfile.mkdtemp(prefix="cq-webhook-bench-"))
    settings = Settings(
        database_url=pg.url, broker_url=services.redis_url(), allow_private_urls=True,
        webhook_retry_schedule=args.schedule, webhook_timeout_seconds=args.timeout,
        sweep_interval_seconds=1.0, outbox_grace_seconds=5.0, data_dir=tmp / "data",
    )
    upgrade(settings)
    db = Database(settings)
    service = JobService(db, settings, Publisher.from_settings(settings))
    with db.session() as s:
        tenant = create_api_key(s, "bench")
    worker = start_worker(settings, tmp / "worker.log", concurrency=8)
    example = load_example()
    counts = Counts()
    port = free_port()
    url = f"http://127.0.0.1:{port}/captionq"
    dedupe = str(tmp / "seen.sqlite3")
    try:
        t0 = time.monotonic()
        server = make_receiver(example, tenant.webhook_secret, port, dedupe, counts)
        run_jobs(service, tenant.tenant_id, url, args.jobs)  # 1: up
        stop(server)  # 2: down
        down_at = time.monotonic()
        run_jobs(service, tenant.tenant_id, url, args.jobs)
        sent_during_outage = 2 * args.jobs
        if args.kill_worker:
            time.sleep(max(0.0, args.outage / 2 - (time.monotonic() - down_at)))
            worker.proc.kill()
            worker.proc.wait()
            worker = start_worker(settings, tmp / "worker2.log", concurrency=8)
        time.sleep(max(0.0, args.outage - (time.monotonic() - down_at)))
        counts.slow_delay = args.timeout + 0.5  # 3: back, slow
        counts.slow_until = time.monotonic() + args.slow
        server = make_receiver(example, tenant.webhook_secret, port, dedupe, counts)
        back_at = time.monotonic()
        run_jobs(service, tenant.tenant_id, url, args.jobs)
        total = 6 * args.jobs
        while time.monotonic() - t0 < args.deadline:  # 4: until all delivered
            with db.session() as s:
                open_ = s.scalar(sa.select(sa.func.count()).select_from(WebhookMessage)
                                 .where(WebhookMessage.status == "pending"))
            if not open_ and len(counts.processed) >= total:
                break
            time.sleep(0.25)
        all_in = time.monotonic() - back_at
        time.sleep(2.0)  # anything late would show up now
        stop(server)
        with db.session() as s:
            by_status = dict(s.execute(sa.select(WebhookMessage.status, sa.func.count())
                                       .group_by(WebhookMessage.status)).all())
            attempts = s.scalar(sa.select(sa.func.count()).select_from(WebhookAttempt))
            outage_ids = set(s.scalars(sa.select(WebhookMessage.id).where(WebhookMessage.attempts > 1)))
    finally:
        worker.stop()
        if service.publisher is not None:
            service.publisher.close()
        db.dispose()
        services.drop_database(pg)

    unique = len(counts.processed)
    figures = {
        "events_total": total,
        "events_sent_during_outage": sent_during_outage,
        "outage_seconds": args.outage,
        "messages_by_status": by_status,
        "http_attempts": attempts,
        "messages_needing_retries": len(outage_ids),
        "verified_posts_at_receiver": counts.verified_posts,
        "duplicates_before_dedupe": counts.verified_posts - unique,
        "unique_webhook_ids_processed": unique,
        "processed_more_than_once_after_dedupe": sum(1 for c in counts.processed.values() if c > 1),
        "lost": total - unique,
        "seconds_from_receiver_back_to_all_delivered": round(all_in, 1),
        "schedule": args.schedule,
        "timeout_seconds": args.timeout,
        "worker_killed_during_outage": args.kill_worker,
    }
    print(f"events: {total} ({sent_during_outage} while the receiver was down for {args.outage:g} s"
          + (", io worker SIGKILLed and replaced meanwhile)" if args.kill_worker else ")"))
    print(f"delivered: {by_status.get('delivered', 0)}, failed: {by_status.get('failed', 0)}, "
          f"pending: {by_status.get('pending', 0)}; HTTP attempts {attempts}")
    print(f"receiver: {counts.verified_posts} verified requests, {figures['duplicates_before_dedupe']} "
          f"duplicates by webhook-id, {unique} unique ids processed, "
          f"{figures['processed_more_than_once_after_dedupe']} processed twice after dedupe, "
          f"{figures['lost']} lost")
    print(f"all delivered {all_in:.1f} s after the receiver came back")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
