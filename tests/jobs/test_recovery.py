"""jobs.recovery against real PostgreSQL and Redis: a queued job whose message is gone gets it
again; a silent worker's running jobs are requeued (attempt cap kept); a live worker's are not."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.db import utcnow
from jobs import heartbeats, recovery
from jobs.recovery import resend_queued
from jobs.sweeper import sweep
from jobs.tables import Job
from tests.api.helpers import drain

pytestmark = pytest.mark.services


def _job(svc, job_id):  # type: ignore[no-untyped-def]
    with svc.db.session() as s:
        return s.get(Job, job_id)


def test_a_queued_job_whose_message_is_gone_is_sent_again(jobs_settings, tenant, make_request, svc, quiet):
    job = svc.submit(tenant, make_request(priority=7))
    assert job.id in [m["id"] for m in drain(jobs_settings, expect=1)]  # the message is gone
    assert job.id not in [m["id"] for m in drain(jobs_settings)] or resend_queued(svc, utcnow()) == 0
    later = utcnow() + timedelta(seconds=jobs_settings.queued_resend_seconds + 1)
    assert sweep(svc, now=later).resent >= 1
    msgs = drain(jobs_settings, expect=1)
    mine = [m for m in msgs if m["id"] == job.id]
    assert len(mine) == 1 and mine[0]["task"] == "captionq.caption_job" and mine[0]["priority"] == 2
    assert _job(svc, job.id).dispatched_at == later
    # Once per period: the next sweep a moment later leaves it alone.
    assert resend_queued(svc, later + timedelta(seconds=1)) == 0


def test_messages_still_waiting_in_the_broker_are_not_doubled(jobs_settings, tenant, make_request, svc):
    drain(jobs_settings)
    with svc.db.session() as s:  # other tests' queued jobs (without messages) out of the count
        s.execute(sa.update(Job).where(Job.status == "queued").values(status="canceled"))
    jobs = [svc.submit(tenant, make_request()) for _ in range(3)]  # three messages wait in Redis
    later = utcnow() + timedelta(seconds=jobs_settings.queued_resend_seconds + 1)
    assert resend_queued(svc, later) == 0
    got = drain(jobs_settings, expect=3)  # one message each, no duplicates
    assert sorted(m["id"] for m in got) == sorted(j.id for j in jobs)
    # Now the broker holds none of them: all three are due for a re-send.
    assert resend_queued(svc, later) == 3
    assert sorted(m["id"] for m in drain(jobs_settings, expect=3)) == sorted(j.id for j in jobs)


def test_a_silent_workers_jobs_are_requeued_and_a_live_ones_are_not(jobs_settings, tenant, make_request, svc):
    now = utcnow()
    heartbeats.beat(svc.db, "w-dead", now=now - timedelta(seconds=jobs_settings.worker_dead_seconds + 5))
    heartbeats.beat(svc.db, "w-live", now=now)
    lost, kept, capped = (svc.submit(tenant, make_request()) for _ in range(3))
    drain(jobs_settings, expect=3)
    assert svc.start(lost.id, worker_id="w-dead").attempt == 1
    assert svc.start(kept.id, worker_id="w-live").attempt == 1
    assert svc.start(capped.id, worker_id="w-dead") is not None
    with svc.db.session() as s:  # its last attempt allowed
        s.execute(sa.update(Job).where(Job.id == capped.id).values(attempts=jobs_settings.max_attempts))
    recovery._judge.last_ok = None  # as in a fresh process, or after a database outage:
    first = sweep(svc, now=now)  # the first sweep only notes that it reaches the database
    assert first.requeued == first.lost == 0 and _job(svc, lost.id).status == "running"
    report = sweep(svc, now=now)
    assert report.requeued >= 1 and report.lost >= 1
    requeued = _job(svc, lost.id)
    assert requeued.status == "queued" and requeued.attempts == 1 and requeued.worker_id is None
    assert lost.id in [m["id"] for m in drain(jobs_settings, expect=1)]
    failed = _job(svc, capped.id)
    assert failed.status == "failed" and failed.error["code"] == "worker_lost"
    assert _job(svc, kept.id).status == "running"
    assert heartbeats.dead_workers(svc.db, jobs_settings.worker_dead_seconds, now) == []  # forgotten
    assert heartbeats.live_count(svc.db, jobs_settings.worker_dead_seconds, now) >= 1
    heartbeats.forget(svc.db, "w-live")


def test_a_bounded_batch_dispatch_is_not_mistaken_for_lost_messages(jobs_settings, tenant):  # type: ignore[no-untyped-def]
    """Jobs a bounded dispatch has not reached yet have no message by design: they are neither
    re-sent nor counted against the messages waiting in the broker."""
    from tests.api.helpers import service
    from tests.jobs.test_sweeper import _batch

    windowed = service(jobs_settings.model_copy(update={"dispatch_window": 4}))
    try:
        drain(jobs_settings)
        with windowed.db.session() as s:  # other tests' queued jobs out of the count
            s.execute(sa.update(Job).where(Job.status == "queued").values(status="canceled"))
        _, outbox_ids = _batch(windowed, tenant, jobs_settings, 12)
        assert windowed.publish(outbox_ids) == 4  # the first window: 4 messages wait in Redis
        later = utcnow() + timedelta(seconds=jobs_settings.queued_resend_seconds + 1)
        assert resend_queued(windowed, later) == 0  # 4 sent, 4 waiting: nothing missing
        assert len(drain(jobs_settings, expect=4)) == 4
        assert resend_queued(windowed, later) == 4  # now they are gone: only those 4 come back
        assert len(drain(jobs_settings, expect=4)) == 4
    finally:
        windowed.db.dispose()


def test_lost_messages_are_counted_and_resent_model_by_model(jobs_settings, tenant, svc):  # type: ignore[no-untyped-def]
    """A model's waiting messages never stand in for another's lost ones; a worker claims only
    its model's jobs and records its revision."""
    from api.urlcheck import StorageUrlChecker
    from jobs.requests import ModelLimits, RequestLimits, normalize_job_request
    from jobs.transitions import ServedModel

    drain(jobs_settings)
    with svc.db.session() as s:  # other tests' queued jobs out of the count
        s.execute(sa.update(Job).where(Job.status == "queued").values(status="canceled"))
    limits = RequestLimits(models={"a": ModelLimits("a"), "b": ModelLimits("b")}, default_model="a")
    checker = StorageUrlChecker(jobs_settings)
    a, b = ([svc.submit(tenant, normalize_job_request({"prompts": ["Hi"], "model": m}, checker, limits))
             for _ in range(2)] for m in ("a", "b"))
    assert sorted(m["id"] for m in drain(jobs_settings, queue="gpu.b", expect=2)) == sorted(j.id for j in b)
    later = utcnow() + timedelta(seconds=jobs_settings.queued_resend_seconds + 1)
    assert resend_queued(svc, later) == 2  # b's two, although a's two messages still wait
    resent = drain(jobs_settings, queue="gpu.b", expect=2)
    assert sorted(m["id"] for m in resent) == sorted(j.id for j in b)
    assert len(drain(jobs_settings, queue="gpu.a", expect=2)) == 2  # a's, never doubled
    assert svc.start(b[0].id, served=ServedModel("a")) is None  # not its model: left queued
    assert _job(svc, b[0].id).status == "queued"
    assert svc.start(b[0].id, served=ServedModel("b", takes_unnamed=False, revision="sha256:r1")) is not None
    assert _job(svc, b[0].id).model_revision == "sha256:r1"
    with svc.db.session() as s:
        s.execute(sa.update(Job).where(Job.id.in_([j.id for j in a + b])).values(status="canceled"))
