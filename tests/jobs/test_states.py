"""The state machine through the service on PostgreSQL: repeated and out-of-order transitions
are no-ops, attempts are counted in SQL, concurrent claims have exactly one winner, batch
counters stay exact under concurrency, side effects land in the outbox."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.db import utcnow
from jobs import batches
from jobs.states import CANCEL, EXPIRE, FAIL, REQUEUE, RETRY, START, SUCCEED, TRANSITIONS, JobStatus
from jobs.tables import Batch, Job, Outbox, WebhookMessage
from tests.api.helpers import drain

pytestmark = pytest.mark.services


def _job(svc, tenant, make_request, **kw):  # type: ignore[no-untyped-def]
    return svc.submit(tenant, make_request(**kw))


def _row(svc, job_id):  # type: ignore[no-untyped-def]
    with svc.db.session() as s:
        return s.get(Job, job_id)


def test_transition_table():
    assert START.sources == {JobStatus.QUEUED} and START.target == JobStatus.RUNNING
    assert SUCCEED.sources == {JobStatus.RUNNING}
    assert FAIL.sources == CANCEL.sources == {JobStatus.QUEUED, JobStatus.RUNNING}
    assert EXPIRE.sources == {JobStatus.QUEUED} and EXPIRE.target == JobStatus.FAILED
    assert REQUEUE.sources == {JobStatus.RUNNING} and REQUEUE.target == JobStatus.QUEUED
    # Only a batch retry leaves an end state, and only a failure: nothing undoes a success.
    assert RETRY.sources == {JobStatus.FAILED} and RETRY.target == JobStatus.QUEUED
    assert not any(t.sources & {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}
                   for t in TRANSITIONS.values() if t is not RETRY)


def test_repeated_and_out_of_order_transitions_are_noops(svc, tenant, make_request):
    job = _job(svc, tenant, make_request)
    assert svc.succeed(job.id, {"text": "early"}) is False  # not running yet
    # The worker's cancel record needs a job it runs whose cancel was asked for.
    assert svc.mark_canceled(job.id) is False
    assert svc.cancel(tenant, job.id).status == "canceled"  # a client's cancel of a queued job
    assert svc.start(job.id) is None and svc.mark_canceled(job.id) is False
    assert _row(svc, job.id).status == "canceled"
    job = _job(svc, tenant, make_request)
    assert svc.requeue(job.id) is False  # queued: nothing to requeue
    claimed = svc.start(job.id)
    assert claimed is not None and claimed.attempt == 1 and claimed.job_id == job.id
    assert claimed["prompts"] == ["Describe the image in detail."]
    assert svc.start(job.id) is None  # a duplicate message
    assert svc.succeed(job.id, {"text": "done"}, {"model": "m"}, attempt=1) is True
    assert svc.succeed(job.id, {"text": "again"}, attempt=1) is False
    assert svc.fail(job.id, "internal", "late failure") is None
    assert svc.mark_canceled(job.id) is False
    assert svc.start(job.id, redelivered=True) is None
    assert svc.expire(job.id) is False
    row = _row(svc, job.id)
    assert row.status == "succeeded" and row.output == {"text": "done"} and row.attempts == 1
    assert row.metrics["model"] == "m" and row.metrics["run_seconds"] >= 0
    with pytest.raises(Exception) as exc:
        svc.cancel(tenant, job.id)
    assert getattr(exc.value, "code", None) == "job_finished"


def test_attempts_counted_in_sql_and_capped(svc, tenant, make_request):
    job = _job(svc, tenant, make_request)
    for n in (1, 2, 3):  # each redelivery after a lost worker takes the job over
        c = svc.start(job.id, redelivered=True)
        assert c is not None and c.attempt == n
    assert svc.start(job.id, redelivered=True) is None  # max_attempts = 3 used up
    row = _row(svc, job.id)
    assert row.status == "failed" and row.error["code"] == "worker_lost" and row.attempts == 3


def test_superseded_attempt_cannot_record(svc, tenant, make_request):
    job = _job(svc, tenant, make_request)
    first = svc.start(job.id)
    assert svc.requeue(job.id, attempt=first.attempt) is True
    second = svc.start(job.id)
    assert second.attempt == 2
    assert svc.succeed(job.id, {"text": "stale"}, attempt=first.attempt) is False
    assert svc.fail(job.id, "internal", "stale", attempt=first.attempt) is None
    assert svc.succeed(job.id, {"text": "fresh"}, attempt=second.attempt) is True
    assert _row(svc, job.id).output == {"text": "fresh"}


def test_retryable_failure_requeues_until_the_cap(svc, tenant, make_request, jobs_settings):
    job = _job(svc, tenant, make_request)
    drain(jobs_settings)
    c = svc.start(job.id)
    assert svc.fail(job.id, "transient", "S3 timed out", retryable=True, attempt=c.attempt) == "queued"
    assert [m["id"] for m in drain(jobs_settings, expect=1)] == [job.id]  # a fresh gpu message
    row = _row(svc, job.id)
    assert row.status == "queued" and row.error is None and row.started_at is None
    c = svc.start(job.id)
    assert svc.fail(job.id, "transient", "again", retryable=True, attempt=c.attempt) == "queued"
    c = svc.start(job.id)
    assert c.attempt == 3
    assert svc.fail(job.id, "transient", "third", retryable=True, attempt=c.attempt) == "failed"
    row = _row(svc, job.id)
    assert row.error == {"code": "transient", "message": "third", "retryable": True}


def test_expired_job_is_not_started(svc, tenant, make_request):
    job = _job(svc, tenant, make_request, ttl_seconds=60)
    with svc.db.session() as s:
        s.execute(sa.update(Job).where(Job.id == job.id).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert svc.start(job.id) is None
    row = _row(svc, job.id)
    assert row.status == "failed" and row.error["code"] == "expired" and row.attempts == 0


def test_partial_text_and_cancel_flag(svc, tenant, make_request):
    job = _job(svc, tenant, make_request)
    assert svc.set_partial_text(job.id, "x") is False  # not running
    svc.start(job.id)
    assert svc.set_partial_text(job.id, "A red") is True
    assert _row(svc, job.id).partial_text == "A red"
    assert svc.is_cancel_requested(job.id) is False
    assert svc.cancel(tenant, job.id).cancel_requested is True
    assert svc.is_cancel_requested(job.id) is True
    assert svc.mark_canceled(job.id) is True
    row = _row(svc, job.id)
    assert row.status == "canceled" and row.partial_text is None and row.finished_at is not None
    assert svc.is_cancel_requested("job_unknown") is True


def test_concurrent_claims_have_one_winner(svc, tenant, make_request):
    for _ in range(15):
        job = _job(svc, tenant, make_request)
        barrier = threading.Barrier(2)
        results: list[object] = []

        def claim(job_id: str = job.id, barrier: threading.Barrier = barrier,
                  results: list[object] = results) -> None:
            barrier.wait()
            results.append(svc.start(job_id))

        threads = [threading.Thread(target=claim) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert _row(svc, job.id).attempts == 1


def test_batch_counters_exact_under_concurrency(svc, tenant, make_request, jobs_settings):
    body = {"jobs": [{"media": [{"type": "image", "url": "s3://bucket-a/x.jpg"}], "custom_id": str(i)}
                               for i in range(40)],
                      "webhook": {"url": "https://hooks.example.com/b"}}
    from api.urlcheck import StorageUrlChecker
    from jobs.requests import RequestLimits

    checker = StorageUrlChecker(jobs_settings)
    plan = batches.plan_batch(body, checker, 1000)
    spool = batches.validate_lines(enumerate(plan.jobs or []), plan, checker, RequestLimits(), "jobs")
    batch, outbox_ids = batches.insert_batch(svc, tenant, plan, spool)
    svc.publish(outbox_ids)
    ids = [line["job_id"] for line in svc.iter_batch_results(batch.id)]
    assert len(ids) == 40

    def work(chunk: list[str]) -> None:
        for i, job_id in enumerate(chunk):
            c = svc.start(job_id)
            assert c is not None
            if i % 3 == 0:
                svc.fail(job_id, "media_unreadable", "bad bytes", attempt=c.attempt)
            else:
                svc.succeed(job_id, {"text": "ok"}, attempt=c.attempt)

    threads = [threading.Thread(target=work, args=(ids[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with svc.db.session() as s:
        b = s.get(Batch, batch.id)
        counted = dict(s.execute(sa.select(Job.status, sa.func.count()).where(Job.batch_id == batch.id)
                                 .group_by(Job.status)).all())
        completed = s.scalar(sa.select(sa.func.count()).select_from(WebhookMessage).where(
            WebhookMessage.batch_id == batch.id, WebhookMessage.type == "batch.completed"))
    assert (b.succeeded, b.failed, b.queued, b.running) == (counted["succeeded"], counted["failed"], 0, 0)
    assert b.succeeded + b.failed == 40 and b.status == "completed" and b.finished_at is not None
    assert completed == 1


def test_webhook_messages_written_with_the_transition(svc, tenant, make_request):
    hook = {"url": "https://hooks.example.com/j", "events": ["job.running", "job.succeeded"]}
    job = _job(svc, tenant, make_request, webhook=hook)
    c = svc.start(job.id)
    svc.succeed(job.id, {"text": "hi"}, attempt=c.attempt)
    with svc.db.session() as s:
        msgs = list(s.scalars(sa.select(WebhookMessage).where(WebhookMessage.job_id == job.id)
                              .order_by(WebhookMessage.created_at)))
        pending = s.scalar(sa.select(sa.func.count()).select_from(Outbox).where(
            Outbox.task_id.in_([m.id for m in msgs])))
    assert [m.type for m in msgs] == ["job.running", "job.succeeded"]
    assert all(m.id.startswith("msg_") and m.status == "pending" and m.url == hook["url"] for m in msgs)
    assert msgs[0].payload["status"] == "running" and msgs[1].payload["status"] == "succeeded"
    assert msgs[1].payload["output"] == {"text": "hi"} and msgs[1].payload["id"] == job.id
    assert pending == 0  # published after commit, then deleted


def test_a_requeued_job_is_not_canceled_by_its_old_worker(svc, tenant, make_request):
    job = _job(svc, tenant, make_request)
    claimed = svc.start(job.id)
    assert claimed is not None
    assert svc.requeue(job.id, attempt=claimed.attempt) is True  # the sweeper took it back
    assert svc.mark_canceled(job.id, attempt=claimed.attempt) is False
    assert _row(svc, job.id).status == "queued"
    again = svc.start(job.id)
    assert again is not None and again.attempt == claimed.attempt + 1
    assert svc.mark_canceled(job.id, attempt=again.attempt) is False  # no cancel was asked for
    svc.cancel(tenant, job.id)
    assert svc.mark_canceled(job.id, attempt=again.attempt) is True


def test_claim_and_record_by_claim_in_one_statement_each(svc, tenant, make_request):
    # The worker's path: the claim returns this attempt's start, the record passes the claim
    # back (no read of the row first); a superseded claim records nothing.
    job = _job(svc, tenant, make_request)
    first = svc.start(job.id)
    assert first is not None and first.started_at is not None and first.created_at == job.created_at
    assert svc.requeue(job.id, attempt=first.attempt) is True
    second = svc.start(job.id)
    assert second is not None and second.attempt == 2 and second.started_at >= first.started_at
    assert svc.succeed_job(job.id, {"text": "stale"}, claim=first) is None
    done = svc.succeed_job(job.id, {"text": "fresh"}, {"model": "m"}, claim=second)
    assert done is not None and done.status == "succeeded" and done.output == {"text": "fresh"}
    assert svc.succeed_job(job.id, {"text": "again"}, claim=second) is None
    row = _row(svc, job.id)
    assert row.started_at == second.started_at and row.metrics["model"] == "m"
    assert row.metrics["queued_seconds"] == round((second.started_at - job.created_at).total_seconds(), 3)
    assert row.metrics["run_seconds"] == round((row.finished_at - second.started_at).total_seconds(), 3)


def test_claim_commits_without_the_wal_flush_and_a_lost_claim_is_recognised(svc, tenant, make_request):
    import sqlalchemy as sa
    from sqlalchemy import event

    statements: list[tuple[str, object]] = []
    here = threading.get_ident()

    def seen(conn, _cursor, statement, *_a):  # type: ignore[no-untyped-def]
        # Only this thread's statements: a lease renewer left running by an earlier test
        # in the same process writes on its own thread.
        if threading.get_ident() == here:
            statements.append((" ".join(statement.split())[:40], conn.engine))

    event.listen(sa.engine.Engine, "before_cursor_execute", seen)
    try:
        job = _job(svc, tenant, make_request)
        statements.clear()
        claimed = svc.start(job.id)
    finally:
        event.remove(sa.engine.Engine, "before_cursor_execute", seen)
    assert claimed is not None and claimed.attempt == 1
    # One statement, on the pool whose connections commit without waiting for the WAL flush.
    assert len(statements) == 1 and statements[0][0].startswith("UPDATE jobs SET status="), statements
    relaxed = statements[0][1]
    assert relaxed is not svc.db.engine
    with relaxed.connect() as conn:  # type: ignore[attr-defined]
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "off"
    with svc.db.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"
    assert svc.claim_lost(job.id, claimed.attempt) is False  # running: nothing lost
    with svc.db.session() as s:  # what a crash before the WAL flush would leave behind
        s.execute(sa.text("UPDATE jobs SET status = 'queued', attempts = 0 WHERE id = :id"), {"id": job.id})
    assert svc.succeed_job(job.id, {"text": "x"}, claim=claimed) is None
    assert svc.claim_lost(job.id, claimed.attempt) is True
    again = svc.start(job.id)
    assert again is not None and again.attempt == 1
    assert svc.requeue(job.id, attempt=again.attempt) is True  # the sweeper's requeue keeps the count
    assert svc.claim_lost(job.id, again.attempt) is False
