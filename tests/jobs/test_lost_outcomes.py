"""Recording a job's outcome through a database outage (worker.pipeline.record_outcome), against
the real PostgreSQL: the three ways a finished or claimed job used to be lost.

1. the result cannot be written for a while: it is retried in place, and recorded once;
2. it cannot be written at all: the job is handed back (``RetryLater``) and the redelivery takes
   it over, whether it is still ``running`` or its claim was lost meanwhile (``queued``);
3. the claim was lost and the record returned "not applied": also handed back.

The database errors are the driver's own, taken from a connection to a closed port.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from core.db import Database
from tests.api.helpers import drain, free_port
from worker.pipeline import RetryLater, _not_recorded, record_outcome

pytestmark = pytest.mark.services

NO_WAIT = (0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def outage(jobs_settings) -> Exception:  # type: ignore[no-untyped-def]
    """The exception a write raises while PostgreSQL is down."""
    down = Database(jobs_settings.model_copy(update={
        "database_url": f"postgresql://captionq@127.0.0.1:{free_port()}/captionq"}))
    try:
        down.ping()
    except Exception as exc:
        return exc
    finally:
        down.dispose()
    raise AssertionError("a closed port answered")


def flaky(fails: int, outage: Exception, write: Any) -> Any:
    """``write``, raising ``outage`` on its first ``fails`` calls."""
    calls = {"n": 0}

    def call() -> Any:
        calls["n"] += 1
        if calls["n"] <= fails:
            raise outage
        return write()

    return call


def _claimed(svc, tenant, make_request, jobs_settings):  # type: ignore[no-untyped-def]
    job = svc.submit(tenant, make_request())
    drain(jobs_settings, expect=1)
    claimed = svc.start(job.id)
    assert claimed is not None and claimed.attempt == 1
    return claimed


def _lose_claim(svc, job_id):  # type: ignore[no-untyped-def]
    with svc.db.session() as s:  # what a crash before the claim's WAL flush leaves behind
        s.execute(sa.text("UPDATE jobs SET status = 'queued', attempts = 0, started_at = NULL "
                          "WHERE id = :id"), {"id": job_id})


def test_a_brief_outage_is_waited_out_and_the_result_recorded_once(
        svc, tenant, make_request, jobs_settings, outage):  # type: ignore[no-untyped-def]
    claimed = _claimed(svc, tenant, make_request, jobs_settings)
    rt = SimpleNamespace(jobs=svc)
    write = flaky(2, outage, lambda: svc.succeed_job(claimed.job_id, {"text": "a"}, claim=claimed))
    job = record_outcome(rt, claimed, write, backoff=NO_WAIT)  # type: ignore[arg-type]
    assert job is not None and job.status == "succeeded" and job.attempts == 1


def test_a_long_outage_hands_the_job_back_and_the_redelivery_finishes_it(
        svc, tenant, make_request, jobs_settings, outage):  # type: ignore[no-untyped-def]
    claimed = _claimed(svc, tenant, make_request, jobs_settings)
    rt = SimpleNamespace(jobs=svc)
    write = flaky(99, outage, lambda: svc.succeed_job(claimed.job_id, {"text": "a"}, claim=claimed))
    with pytest.raises(RetryLater):
        record_outcome(rt, claimed, write, backoff=NO_WAIT)  # type: ignore[arg-type]
    again = svc.start(claimed.job_id, redelivered=True)  # the job is still running: taken over
    assert again is not None and again.attempt == 2
    assert svc.succeed(claimed.job_id, {"text": "b"}, claim=again)
    assert not svc.succeed(claimed.job_id, {"text": "a"}, claim=claimed)  # the old attempt: no-op


def test_a_lost_claim_whose_record_raises_is_run_again(
        svc, tenant, make_request, jobs_settings, outage):  # type: ignore[no-untyped-def]
    claimed = _claimed(svc, tenant, make_request, jobs_settings)
    _lose_claim(svc, claimed.job_id)
    rt = SimpleNamespace(jobs=svc)
    write = flaky(99, outage, lambda: svc.succeed_job(claimed.job_id, {"text": "a"}, claim=claimed))
    with pytest.raises(RetryLater):
        record_outcome(rt, claimed, write, backoff=NO_WAIT)  # type: ignore[arg-type]
    again = svc.start(claimed.job_id, redelivered=True)  # queued again: claimed by the redelivery
    assert again is not None and again.attempt == 1
    assert svc.succeed(claimed.job_id, {"text": "b"}, claim=again)
    assert svc.get(tenant, claimed.job_id).status == "succeeded"


def test_a_lost_claim_whose_record_does_not_apply_is_run_again(
        svc, tenant, make_request, jobs_settings):  # type: ignore[no-untyped-def]
    claimed = _claimed(svc, tenant, make_request, jobs_settings)
    _lose_claim(svc, claimed.job_id)
    assert svc.succeed_job(claimed.job_id, {"text": "a"}, claim=claimed) is None
    with pytest.raises(RetryLater):
        _not_recorded(SimpleNamespace(jobs=svc), claimed, "result")  # type: ignore[arg-type]
    # A job that merely moved on (requeued by the sweeper keeps the count) is left alone.
    other = _claimed(svc, tenant, make_request, jobs_settings)
    assert svc.requeue(other.job_id, attempt=other.attempt)
    assert _not_recorded(SimpleNamespace(jobs=svc), other, "result") == "stopped"  # type: ignore[arg-type]
