"""Fleet-wide numbers read from the database and the broker: jobs by status (and by tenant),
queue depth and the age of the oldest waiting work per queue, pending webhook messages.

What ``/metrics`` exports as gauges (:mod:`api.metrics`) and ``GET /v1/queues`` returns. These
describe shared state, not one process, so whichever API process answers a scrape computes them
(cached for a few seconds; they are a handful of indexed aggregate queries).

Cardinality stays bounded: per-tenant series cover only the active statuses (``queued``,
``running``) and only the :data:`MAX_TENANT_SERIES` tenants with the most active jobs; the rest
are summed under the tenant label ``other``.

Queue depth is what an autoscaler (KEDA's Prometheus scaler) scales GPU workers on:

- ``gpu.<model>``, one per registry model (:mod:`jobs.model_fleet` counts them, the legacy
  ``gpu`` queue in the default model's): caption messages waiting in the broker, and jobs
  ``queued`` in SQL (a batch keeps most of its jobs in SQL and tops the broker up by
  ``dispatch_window``; SQL is the backlog); the oldest queued job's age is how long the longest
  waiting job has waited;
- ``io``: messages in the broker, and webhook messages due for an attempt (their oldest
  due time's age).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from core.db import Database, utcnow
from core.registry import Registry
from jobs.model_fleet import list_models
from jobs.queue import QUEUE_IO, Publisher
from jobs.states import JobStatus
from jobs.tables import Job, WebhookMessage

MAX_TENANT_SERIES = 20
OTHER_TENANTS = "other"
ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
PENDING = "pending"  # webhook_messages.status of a message still to be delivered


@dataclass(frozen=True)
class QueueState:
    name: str
    model: str | None  # the registry model of a gpu queue
    messages: int | None  # waiting in the broker (None: the transport cannot say)
    waiting: int  # work waiting in SQL: queued jobs (gpu) or due webhook messages (io)
    oldest_age_seconds: float  # 0 when nothing waits

    def to_dict(self) -> dict[str, Any]:
        return {"object": "queue", **asdict(self)}


def _age(now: datetime, since: datetime | None) -> float:
    return round(max(0.0, (now - since).total_seconds()), 3) if since is not None else 0.0


def queue_states(db: Database, publisher: Publisher | None, registry: Registry, dead_seconds: float,
                 now: datetime | None = None) -> list[QueueState]:
    """Every gpu queue (one per model) and the io queue."""
    now = now or utcnow()
    w = WebhookMessage
    due = sa.func.coalesce(w.next_attempt_at, w.created_at)
    count = publisher.ready_count if publisher is not None else None
    with db.session() as session:
        models = list_models(session, registry, dead_seconds, now, count)["data"]
        hooks, oldest_hook = session.execute(
            sa.select(sa.func.count(), sa.func.min(due)).where(w.status == PENDING, due <= now)
        ).one()
    out = [QueueState(m["queue"], m["id"], m["queue_messages"], m["queued_jobs"],
                      float(m["oldest_queued_seconds"] or 0.0)) for m in models]
    out.append(QueueState(QUEUE_IO, None, count(QUEUE_IO) if count else None, int(hooks or 0),
                          _age(now, oldest_hook)))
    return out


def jobs_by_status(db: Database) -> dict[str, int]:
    counts = {s.value: 0 for s in JobStatus}
    with db.session() as session:
        for status, n in session.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)):
            counts[status] = int(n)
    return counts


def active_jobs_by_tenant(db: Database, limit: int = MAX_TENANT_SERIES) -> dict[tuple[str, str], int]:
    """``(tenant, status) -> count`` for queued and running jobs, the busiest ``limit`` tenants
    by name and the rest as ``other``."""
    with db.session() as session:
        rows = session.execute(
            sa.select(Job.tenant_id, Job.status, sa.func.count())
            .where(Job.status.in_(ACTIVE)).group_by(Job.tenant_id, Job.status)
        ).all()
    return bound_tenants([(str(t), str(s), int(n)) for t, s, n in rows], limit)


def bound_tenants(rows: list[tuple[str, str, int]], limit: int) -> dict[tuple[str, str], int]:
    """Keep the ``limit`` tenants with the most jobs (ties by id); sum the others as ``other``."""
    totals: dict[str, int] = {}
    for tenant, _status, n in rows:
        totals[tenant] = totals.get(tenant, 0) + n
    kept = set(sorted(totals, key=lambda t: (-totals[t], t))[:limit])
    out: dict[tuple[str, str], int] = {}
    for tenant, status, n in rows:
        key = (tenant if tenant in kept else OTHER_TENANTS, status)
        out[key] = out.get(key, 0) + n
    return out


def pending_webhooks(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(WebhookMessage)
                                  .where(WebhookMessage.status == PENDING)) or 0)
