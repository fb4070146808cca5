"""Published outbox rows deleted off the request path: a moment after publishing, many per
statement, and whatever is pending when the process stops."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from jobs.outbox_cleaner import OutboxCleaner
from jobs.service import JobService
from jobs.tables import Outbox
from tests.api.helpers import drain

pytestmark = pytest.mark.services


def _rows(svc: JobService, job_ids: list[str]) -> int:
    with svc.db.session() as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(Outbox)
                            .where(Outbox.task_id.in_(job_ids))) or 0)


def test_submitted_jobs_rows_go_after_the_linger(jobs_settings, tenant, make_request, svc):  # type: ignore[no-untyped-def]
    svc.cleaner = OutboxCleaner(svc.db)
    try:
        drain(jobs_settings)
        svc.cleaner.linger = 1.0
        jobs = [svc.submit(tenant, make_request()).id for _ in range(5)]
        assert _rows(svc, jobs) == 5  # published, but the reminders stay for a moment
        assert len(drain(jobs_settings, expect=5)) == 5
        deadline = time.monotonic() + 5
        while _rows(svc, jobs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _rows(svc, jobs) == 0
    finally:
        svc.cleaner.close()


def test_close_deletes_what_is_pending(jobs_settings, tenant, make_request, svc):  # type: ignore[no-untyped-def]
    cleaner = OutboxCleaner(svc.db, linger=60.0)
    svc.cleaner = cleaner
    drain(jobs_settings)
    jobs = [svc.submit(tenant, make_request()).id for _ in range(3)]
    assert _rows(svc, jobs) == 3
    cleaner.close()
    assert _rows(svc, jobs) == 0
    with pytest.raises(RuntimeError):
        cleaner.discard([1])
    drain(jobs_settings)
