"""The fair dispatcher in SQL (jobs.fair_dispatch) with real PostgreSQL and Redis: which batch
jobs enter the gpu queue, across tenants by weight and within a tenant by priority; and two
dispatchers (two sweepers on two hosts) at once."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from api.urlcheck import StorageUrlChecker
from core.db import Database
from core.settings import Settings
from jobs import batches, fair_dispatch
from jobs.queue import Publisher
from jobs.requests import RequestLimits
from jobs.service import JobService
from jobs.sweeper import sweep
from jobs.tables import FairQueue, Job
from jobs.tenants import set_weight
from tests.api.helpers import drain, new_tenant, service

pytestmark = pytest.mark.services

WINDOW = 10


@pytest.fixture
def windowed(jobs_settings: Settings, quiet: None) -> Any:
    s = service(jobs_settings.model_copy(update={"dispatch_window": WINDOW}))
    yield s
    s.db.dispose()


def tenant(settings: Settings, weight: float | None = None) -> str:
    tid = new_tenant(settings, f"fair-{uuid.uuid4().hex[:8]}").tenant_id
    if weight is not None:
        db = Database(settings)
        try:
            with db.session() as session:
                set_weight(session, tid, weight)
        finally:
            db.dispose()
    return tid


def submit_batch(svc: JobService, tenant_id: str, priorities: list[int]) -> list[str]:
    """A batch with one job per priority given; returns its job ids in submission order (its
    dispatch row is published: the window's first fill)."""
    checker = StorageUrlChecker(svc.settings)
    body = {"jobs": [{"media": [{"type": "image", "url": "s3://bucket-a/x.jpg"}], "priority": p}
                     for p in priorities]}
    plan = batches.plan_batch(body, checker, 10_000)
    spool = batches.validate_lines(enumerate(plan.jobs or []), plan, checker, RequestLimits(), "jobs")
    batch, outbox_ids = batches.insert_batch(svc, tenant_id, plan, spool)
    svc.publish(outbox_ids)
    return [line["job_id"] for line in svc.iter_batch_results(batch.id)]


def owners(svc: JobService, job_ids: list[str]) -> dict[str, str]:
    with svc.db.session() as s:
        return dict(s.execute(sa.select(Job.id, Job.tenant_id).where(Job.id.in_(job_ids))).tuples().all())


def start_all(svc: JobService, job_ids: list[str]) -> None:
    for job_id in job_ids:
        assert svc.start(job_id) is not None


def test_a_newcomer_waits_behind_one_window_not_the_backlog(jobs_settings, windowed):
    a, b = tenant(jobs_settings), tenant(jobs_settings)
    backlog = submit_batch(windowed, a, [0] * 300)
    first = [m["id"] for m in drain(jobs_settings, expect=WINDOW, timeout=0.05)]
    assert first == backlog[:WINDOW]  # the window, not the backlog, is in the broker
    newcomer = submit_batch(windowed, b, [0, 0, 0])
    assert drain(jobs_settings, timeout=0.2) == []  # the window is still full
    start_all(windowed, first[:2])  # two of A's jobs start: room for two
    assert sweep(windowed).dispatched == 2
    nxt = [m["id"] for m in drain(jobs_settings, expect=2, timeout=0.05)]
    assert nxt[0] == newcomer[0]  # B's first job goes first, ahead of 290 of A's
    assert nxt[1] in (newcomer[1], backlog[WINDOW])  # then they alternate (a tie: either)


def test_weights_3_to_1_share_the_dispatches(jobs_settings, windowed):
    a, b = tenant(jobs_settings, 3), tenant(jobs_settings, 1)
    submit_batch(windowed, a, [0] * 200)
    submit_batch(windowed, b, [0] * 200)
    got = [m["id"] for m in drain(jobs_settings, expect=WINDOW, timeout=0.05)]
    while len(got) < 120:
        start_all(windowed, got[-WINDOW:])
        fair_dispatch.dispatch(windowed.db, windowed.publisher, windowed.fair)
        got += [m["id"] for m in drain(jobs_settings, expect=WINDOW, timeout=0.05)]
    shares = Counter(owners(windowed, got[:120]).values())
    # A's batch went out first, alone, before B's existed; from then on 3:1 within a job.
    assert shares[a] / 120 == pytest.approx(0.75 + 0.25 * WINDOW / 120, abs=1.5 / 120)


def test_within_a_tenant_priority_first_then_submission_order(jobs_settings, windowed):
    a = tenant(jobs_settings)
    priorities = [0, 0, 5, 0, 9, 0, 5, 0, 0, 0, 0, 0, 9, 0, 0]
    ids_ = submit_batch(windowed, a, priorities)
    got = [m["id"] for m in drain(jobs_settings, expect=WINDOW, timeout=0.05)]
    rank = sorted(range(len(ids_)), key=lambda i: (-priorities[i], i))
    assert got == [ids_[i] for i in rank[:WINDOW]]


def test_a_dispatch_held_elsewhere_is_skipped(jobs_settings, windowed):
    a = tenant(jobs_settings)
    drain(jobs_settings)
    with windowed.db.session() as s:  # another host's dispatch, mid-transaction
        s.execute(sa.select(FairQueue).where(FairQueue.queue == "gpu").with_for_update())
        assert fair_dispatch.dispatch(windowed.db, windowed.publisher, windowed.fair) is None
        ids_ = submit_batch(windowed, a, [0] * 5)  # its publish waits, then gives up to the sweeper
    assert drain(jobs_settings, timeout=0.2) == []
    assert sweep(windowed).dispatched == 5
    assert sorted(m["id"] for m in drain(jobs_settings, expect=5)) == sorted(ids_)


def test_two_sweepers_at_once_send_each_job_once_within_the_window(jobs_settings, windowed):
    """Two sweepers (own connections, as on two hosts) sweep in a loop while jobs start; every
    job is sent exactly once and the broker never holds more than the window."""
    a, b = tenant(jobs_settings), tenant(jobs_settings, 2)
    total = submit_batch(windowed, a, [0] * 40) + submit_batch(windowed, b, [0] * 40)
    settings = windowed.settings
    hosts = [JobService(Database(settings), settings, Publisher.from_settings(settings)) for _ in range(2)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def sweeper(svc: JobService) -> None:
        try:
            while not stop.is_set():
                sweep(svc)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=sweeper, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    seen: list[str] = []
    try:
        while len(seen) < len(total) and not errors:
            got = [m["id"] for m in drain(jobs_settings, timeout=0.1)]
            # Every message drained so far belongs to a started job, so what waits now was sent
            # within one window.
            assert len(got) <= WINDOW
            seen += got
            start_all(windowed, got)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for h in hosts:
            h.publisher.close()
            h.db.dispose()
    assert not errors, errors
    assert len(seen) == len(set(seen)) == len(total)
    assert set(seen) == set(total)
