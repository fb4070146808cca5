"""The sweeper: outbox rows left unpublished by a broker outage are re-published; TTLs expire;
jobs stuck in running are requeued, then failed with worker_lost at the attempt cap."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.db import Database, utcnow
from jobs.queue import Publisher
from jobs.service import JobService
from jobs.sweeper import sweep
from jobs.tables import Job, Outbox
from tests.api.helpers import drain, free_port

pytestmark = pytest.mark.services


def _outbox_rows(svc, task_id):  # type: ignore[no-untyped-def]
    with svc.db.session() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(Outbox).where(Outbox.task_id == task_id))


def test_broker_outage_loses_nothing(jobs_settings, tenant, make_request, svc):
    dead = jobs_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    down = JobService(Database(jobs_settings), jobs_settings, Publisher.from_settings(dead))
    drain(jobs_settings)
    t0 = time.monotonic()
    job = down.submit(tenant, make_request(priority=5))
    assert time.monotonic() - t0 < 10  # a dead broker does not hang the request
    assert job.status == "queued" and _outbox_rows(svc, job.id) == 1
    assert drain(jobs_settings, timeout=0.3) == []
    # The broker is back (a live publisher): the sweeper re-publishes the committed row.
    report = sweep(svc)
    assert report.republished >= 1
    # (Other tests' jobs left queued without a message may be re-sent by the same sweep.)
    msgs = [m for m in drain(jobs_settings, expect=1) if m["id"] == job.id]
    assert len(msgs) == 1 and msgs[0]["task"] == "captionq.caption_job"
    assert msgs[0]["priority"] == 4
    assert _outbox_rows(svc, job.id) == 0
    assert sweep(svc).republished == 0
    down.db.dispose()


def test_grace_period_leaves_fresh_rows_alone(jobs_settings, tenant, make_request):
    dead = jobs_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    down = JobService(Database(jobs_settings), jobs_settings, Publisher.from_settings(dead))
    job = down.submit(tenant, make_request())
    patient = jobs_settings.model_copy(update={"outbox_grace_seconds": 3600})
    live = JobService(Database(jobs_settings), patient, Publisher.from_settings(jobs_settings))
    sweep(live)
    assert _outbox_rows(live, job.id) == 1  # younger than the grace period: maybe still publishing
    sweep(live, now=utcnow() + timedelta(hours=2))
    assert _outbox_rows(live, job.id) == 0
    for s in (down, live):
        s.db.dispose()


def test_expired_jobs_fail(svc, tenant, make_request):
    job = svc.submit(tenant, make_request(ttl_seconds=5))
    assert sweep(svc).expired == 0 or svc.get(tenant, job.id).status == "queued"
    report = sweep(svc, now=utcnow() + timedelta(seconds=10))
    assert report.expired >= 1
    row = svc.get(tenant, job.id)
    assert row.status == "failed" and row.error["code"] == "expired" and row.finished_at is not None


def test_stuck_running_jobs_are_requeued_then_lost(svc, tenant, make_request, jobs_settings):
    job = svc.submit(tenant, make_request())
    svc.start(job.id)
    budget = jobs_settings.job_hard_time_limit + jobs_settings.stuck_grace_seconds
    assert sweep(svc).requeued == 0  # within its time budget
    drain(jobs_settings)
    later = utcnow() + timedelta(seconds=budget + 5)
    assert sweep(svc, now=later).requeued >= 1
    assert svc.get(tenant, job.id).status == "queued"
    assert job.id in [m["id"] for m in drain(jobs_settings, expect=1)]
    for _ in range(2):
        assert svc.start(job.id) is not None
        with svc.db.session() as s:
            stale = utcnow() - timedelta(seconds=budget + 5)
            s.execute(sa.update(Job).where(Job.id == job.id).values(started_at=stale))
        sweep(svc)
    row = svc.get(tenant, job.id)
    assert row.status == "failed" and row.error["code"] == "worker_lost" and row.attempts == 3


def _batch(svc, tenant, jobs_settings, n, output_url=None):  # type: ignore[no-untyped-def]
    from api.urlcheck import StorageUrlChecker
    from jobs import batches
    from jobs.requests import RequestLimits

    checker = StorageUrlChecker(jobs_settings)
    body = {"jobs": [{"media": [{"type": "image", "url": "s3://bucket-a/x.jpg"}]} for _ in range(n)]}
    if output_url:
        body["output_url"] = output_url
    plan = batches.plan_batch(body, checker, 10_000)
    spool = batches.validate_lines(enumerate(plan.jobs or []), plan, checker, RequestLimits(), "jobs")
    return batches.insert_batch(svc, tenant, plan, spool)


def test_batch_dispatch_survives_a_broker_outage(jobs_settings, tenant, svc):
    dead = jobs_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    down = JobService(Database(jobs_settings), jobs_settings, Publisher.from_settings(dead))
    drain(jobs_settings)
    batch, outbox_ids = _batch(down, tenant, jobs_settings, 30)
    assert len(outbox_ids) == 1  # one dispatch row stands for the 30 caption messages
    assert down.publish(outbox_ids) == 0
    with svc.db.session() as s:
        assert s.scalar(sa.select(Outbox.args).where(Outbox.id == outbox_ids[0])) == [batch.id, -1]
    assert sweep(svc).dispatched == 30
    got = [m["id"] for m in drain(jobs_settings, expect=30)]
    assert got == [line["job_id"] for line in svc.iter_batch_results(batch.id)]  # submission order
    assert _outbox_rows(svc, f"{batch.id}-dispatch") == 0
    down.db.dispose()


def test_lost_finalize_is_resent(jobs_settings, tenant, svc):
    batch, outbox_ids = _batch(svc, tenant, jobs_settings, 2, output_url="s3://bucket-a/out/")
    svc.publish(outbox_ids)
    for line in svc.iter_batch_results(batch.id):
        c = svc.start(line["job_id"])
        svc.succeed(line["job_id"], {"text": "x"}, attempt=c.attempt)
    with svc.db.session() as s:  # the finalize message was lost
        s.execute(sa.delete(Outbox).where(Outbox.task_id == f"{batch.id}-finalize"))
    drain(jobs_settings, queue="io")
    assert sweep(svc).finalize_resent == 0  # not long enough ago
    assert sweep(svc, now=utcnow() + timedelta(minutes=10)).finalize_resent >= 1
    msgs = drain(jobs_settings, queue="io", expect=1)
    assert any(m["task"] == "captionq.finalize_batch" and m["args"] == [batch.id] for m in msgs)
    assert svc.mark_batch_finalized(batch.id)
    assert sweep(svc, now=utcnow() + timedelta(minutes=10)).finalize_resent == 0
