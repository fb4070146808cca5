"""Bounded batch dispatch: a batch keeps at most ``dispatch_window`` caption messages waiting in
the broker; each sweep refills the window as jobs start, in submission order, until every queued
job was dispatched (real PostgreSQL and Redis)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from core.settings import Settings
from jobs.sweeper import sweep
from jobs.tables import Outbox
from tests.api.helpers import drain, service
from tests.jobs.test_sweeper import _batch

pytestmark = pytest.mark.services


@pytest.fixture
def windowed(jobs_settings: Settings, quiet: None) -> Any:
    s = service(jobs_settings.model_copy(update={"dispatch_window": 10}))
    drain(jobs_settings)
    yield s
    s.db.dispose()


def _dispatch_rows(svc: Any, batch_id: str) -> int:
    with svc.db.session() as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(Outbox)
                            .where(Outbox.task_id == f"{batch_id}-dispatch")) or 0)


def _start(svc: Any, job_ids: list[str]) -> None:
    for job_id in job_ids:
        assert svc.start(job_id) is not None


def test_window_bounds_messages_and_sweeps_refill_in_order(jobs_settings, tenant, windowed):
    batch, outbox_ids = _batch(windowed, tenant, jobs_settings, 35)
    order = [line["job_id"] for line in windowed.iter_batch_results(batch.id)]
    assert windowed.publish(outbox_ids) == 10  # the first window only
    first = [m["id"] for m in drain(jobs_settings, expect=10)]
    assert first == order[:10]
    assert _dispatch_rows(windowed, batch.id) == 1  # kept for the top-ups

    assert sweep(windowed).dispatched == 0  # nothing started: the window is still full
    assert drain(jobs_settings, timeout=0.2) == []

    _start(windowed, first[:4])  # four jobs start: room for four more
    assert sweep(windowed).dispatched == 4
    second = [m["id"] for m in drain(jobs_settings, expect=4)]
    assert second == order[10:14]

    _start(windowed, first[4:] + second)  # everything dispatched so far started
    got: list[str] = []
    while len(got) < 35 - 14:
        report = sweep(windowed)
        assert 0 < report.dispatched <= 10
        batch_msgs = [m["id"] for m in drain(jobs_settings, expect=report.dispatched)]
        got += batch_msgs
        _start(windowed, batch_msgs)
    assert got == order[14:]
    assert _dispatch_rows(windowed, batch.id) == 0  # done: the row is gone
    assert sweep(windowed).dispatched == 0


def test_canceled_batch_jobs_never_reach_the_broker(jobs_settings, tenant, windowed):
    from jobs import batches

    batch, outbox_ids = _batch(windowed, tenant, jobs_settings, 25)
    assert windowed.publish(outbox_ids) == 10
    drain(jobs_settings, expect=10)
    batches.cancel_batch(windowed, tenant, batch.id)
    drain(jobs_settings, queue="io", timeout=0.2)
    assert sweep(windowed).dispatched == 0
    assert drain(jobs_settings, timeout=0.2) == []
    assert _dispatch_rows(windowed, batch.id) == 0  # nothing left to dispatch: row dropped


def test_window_zero_sends_everything_at_once(jobs_settings, tenant, svc):
    assert svc.settings.dispatch_window > 0  # the default is bounded ...
    unbounded = service(jobs_settings.model_copy(update={"dispatch_window": 0}))
    try:
        drain(jobs_settings)
        batch, outbox_ids = _batch(unbounded, tenant, jobs_settings, 25)
        assert unbounded.publish(outbox_ids) == 25  # ... 0 means all at submission
        assert len(drain(jobs_settings, expect=25)) == 25
        assert _dispatch_rows(unbounded, batch.id) == 0
    finally:
        unbounded.db.dispose()


def test_each_model_of_a_batch_has_its_own_window_and_queue(jobs_settings, tenant, windowed):
    from api.urlcheck import StorageUrlChecker
    from jobs import batches
    from jobs.requests import ModelLimits, RequestLimits

    checker = StorageUrlChecker(jobs_settings)
    limits = RequestLimits(models={"a": ModelLimits("a"), "b": ModelLimits("b")}, default_model="a")
    body = {"jobs": [{"prompts": [f"line {i}"], "model": "a" if i % 2 else "b"} for i in range(40)]}
    plan = batches.plan_batch(body, checker, 10_000)
    spool = batches.validate_lines(enumerate(plan.jobs or []), plan, checker, limits, "jobs")
    batch, outbox_ids = batches.insert_batch(windowed, tenant, plan, spool)
    assert len(outbox_ids) == 2  # one dispatch per model
    assert windowed.publish(outbox_ids) == 20  # a window (10) of each model
    a = [m["id"] for m in drain(jobs_settings, queue="gpu.a", expect=10)]
    b = [m["id"] for m in drain(jobs_settings, queue="gpu.b", expect=10)]
    order = [line["job_id"] for line in windowed.iter_batch_results(batch.id)]
    assert a == order[1::2][:10] and b == order[0::2][:10]  # each in submission order, on its queue
    # Model a has no worker: its window stays full, and model b's jobs still flow.
    _start(windowed, b)
    assert sweep(windowed).dispatched == 10
    assert [m["id"] for m in drain(jobs_settings, queue="gpu.b", expect=10)] == order[0::2][10:]
    assert drain(jobs_settings, queue="gpu.a", timeout=0.2) == []
    batches.cancel_batch(windowed, tenant, batch.id)  # leave no queued job to later tests' sweeps
    drain(jobs_settings, queue="io", timeout=0.2)
