"""Deliver one webhook message: claim an attempt, sign, send, record, decide what comes next.

The message row (``webhook_messages``, written by ``jobs`` in the same transaction as the state
change) is the whole state; Celery messages are only wake-up calls, so any of them may be lost or
arrive twice:

1. **Claim** (one short transaction): ``UPDATE … SET attempts = attempts + 1, next_attempt_at =
   now + lease WHERE id = ? AND status = 'pending' AND next_attempt_at <= now``. Only one worker
   can win that row for a given attempt; a duplicate wake-up finds ``next_attempt_at`` in the
   future (the lease) and does nothing. If the worker dies mid-attempt, the lease runs out and
   the sweeper wakes the message up again.
2. **Send** with no database session open (``sender.send``: address checks at send time, no
   redirects, one deadline). Signed afresh: the ``webhook-timestamp`` is this attempt's.
3. **Record** (one short transaction): insert the attempt row, then ``UPDATE … WHERE id = ? AND
   attempts = <ours> AND status = 'pending'`` to ``delivered``, ``failed`` (out of attempts) or
   ``pending`` with the next ``next_attempt_at``. A stale worker (its lease expired and someone
   else took over, or an operator asked for a redelivery meanwhile) records its attempt but does not
   overwrite the newer state.
4. **Wake up later**: the retry wait does not hold a thread. Short waits (up to
   ``MAX_COUNTDOWN_SECONDS``) are re-published with a Celery countdown; longer ones, and any wake-up
   that got lost, are found by :func:`republish_due`, which the periodic sweeper calls.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from opentelemetry.trace import SpanKind

from core import logcontext, tracing
from core.db import Database, utcnow
from core.settings import Settings
from jobs.queue import QUEUE_IO, TASK_WEBHOOK, Publisher
from jobs.tables import Job, WebhookAttempt, WebhookMessage
from jobs.tenants import signing_secrets
from worker import metrics as wmetrics
from worker.webhooks import pool, signing
from worker.webhooks.schedule import RetryPolicy, next_delay, parse_retry_after
from worker.webhooks.sender import AttemptResult, send

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# A wake-up may come a little before next_attempt_at (clock skew between hosts, broker ETA
# rounding); within this much it still counts as due. Kept well under the shortest sensible
# retry wait; a wake-up earlier than that is dropped and the sweeper catches the message.
EARLY_TOLERANCE = timedelta(seconds=0.1)
# How long past its deadline an in-flight attempt keeps the message to itself.
LEASE_MARGIN_SECONDS = 30.0
# Waits longer than this are left to the sweeper instead of a broker countdown: an ETA message
# sits unacknowledged in a worker's memory, and on Redis one held past the visibility timeout is
# delivered again (harmless here, but pointless).
MAX_COUNTDOWN_SECONDS = 900.0

# (message id, seconds from now) → publish a wake-up for that message.
Schedule = Callable[[str, float], None]


@dataclass(frozen=True)
class Claim:
    message_id: str
    attempt: int  # 1-based number of the attempt this worker now owns
    tenant_id: str
    type: str
    url: str
    payload: dict[str, Any]
    created_at: datetime
    secrets: list[str]  # the tenant's signing secrets at claim time (two during a rotation)


@dataclass(frozen=True)
class Outcome:
    message_id: str
    claimed: bool  # False: not due, already delivered/failed, unknown, or another worker has it
    attempt: int | None = None
    result: AttemptResult | None = None
    status: str | None = None  # the message's status after this attempt (as we left it)
    retry_in: float | None = None  # seconds until the next attempt, when one is scheduled
    stale: bool = False  # our attempt was recorded but the message had moved on meanwhile


def claim(db: Database, message_id: str, *, now: datetime, lease_seconds: float) -> Claim | None:
    """Take the next attempt of ``message_id`` if it is pending and due (see the module docs)."""
    m = WebhookMessage
    stmt = (
        sa.update(m)
        .where(
            m.id == message_id,
            m.status == PENDING,
            sa.or_(m.next_attempt_at.is_(None), m.next_attempt_at <= now + EARLY_TOLERANCE),
        )
        .values(attempts=m.attempts + 1, next_attempt_at=now + timedelta(seconds=lease_seconds))
        .returning(m.attempts, m.tenant_id, m.type, m.url, m.payload, m.created_at)
    )
    with db.session() as session:
        row = session.execute(stmt).first()
        if row is None:
            return None
        secrets = signing_secrets(session, row.tenant_id, now)
    return Claim(message_id, row.attempts, row.tenant_id, row.type, row.url, row.payload, row.created_at,
                 secrets)


def _prepare(c: Claim, now: datetime) -> tuple[bytes, dict[str, str]]:
    body = signing.encode_body(c.type, c.created_at, c.payload)
    return body, signing.build_headers(c.message_id, int(now.timestamp()), body, c.secrets)


def record(
    db: Database, c: Claim, result: AttemptResult, *, policy: RetryPolicy, rand: float
) -> tuple[str, float | None, bool]:
    """Store the attempt and move the message on. Returns (status, retry in seconds, stale)."""
    finished = result.started_at + timedelta(seconds=result.duration_seconds)
    retry_in: float | None = None
    values: dict[str, Any]
    if result.ok:
        status = DELIVERED
        values = {"status": DELIVERED, "delivered_at": finished, "next_attempt_at": None, "last_error": None}
    else:
        retry_after = parse_retry_after(result.retry_after, finished)
        retry_in = next_delay(policy, c.attempt, rand=rand, retry_after=retry_after)
        if retry_in is None:
            status = FAILED
            values = {"status": FAILED, "next_attempt_at": None, "last_error": result.error}
        else:
            status = PENDING
            values = {"next_attempt_at": finished + timedelta(seconds=retry_in), "last_error": result.error}
    m = WebhookMessage
    with db.session() as session:
        session.add(WebhookAttempt(
            message_id=c.message_id, attempted_at=result.started_at, status_code=result.status_code,
            error=result.error, duration_ms=round(result.duration_seconds * 1000, 3),
        ))
        moved = session.execute(
            sa.update(m)
            .where(m.id == c.message_id, m.attempts == c.attempt, m.status == PENDING)
            .values(**values)
        ).rowcount  # type: ignore[attr-defined]
    if not moved:
        return status, None, True
    return status, retry_in, False


def deliver(
    db: Database,
    settings: Settings,
    message_id: str,
    *,
    schedule: Schedule | None = None,
    now: Callable[[], datetime] = utcnow,
    rand: Callable[[], float] = random.random,
    resolver: Any = None,
) -> Outcome:
    """Make the next attempt of ``message_id`` if it is due; the one call the Celery task makes.

    ``schedule(message_id, seconds)`` publishes the wake-up for a retry (None: leave every retry to
    the sweeper). Never raises for receiver or network trouble; database errors propagate so the
    task fails loudly and the message is picked up again by the sweeper.
    """
    policy = RetryPolicy.from_settings(settings)
    timeout = settings.webhook_timeout_seconds
    c = claim(db, message_id, now=now(), lease_seconds=timeout + LEASE_MARGIN_SECONDS)
    if c is None:
        return Outcome(message_id, claimed=False)
    data = c.payload if isinstance(c.payload, dict) else {}  # the Job or Batch JSON
    own = str(data.get("id") or "")
    job_id = own if own.startswith("job_") else None
    batch_id = data.get("batch_id") or (own if own.startswith("bat_") else None)
    with logcontext.bind(job_id=job_id, batch_id=batch_id, tenant_id=c.tenant_id), \
            tracing.attached(_job_trace(db, job_id)), \
            tracing.span("webhook", kind=SpanKind.CLIENT, captionq__message_id=message_id,
                         captionq__attempt=c.attempt, captionq__event=c.type) as span:
        outcome = _attempt(db, settings, c, policy, timeout, schedule, now, rand, resolver)
        if span is not None and outcome.result is not None:
            span.set_attribute("http.response.status_code", outcome.result.status_code or 0)
            span.set_attribute("captionq.webhook_status", outcome.status or "")
        return outcome


def _job_trace(db: Database, job_id: str | None) -> Any:
    """The trace of the job an event is about: its delivery is the trace's last leg (read only
    while tracing records spans)."""
    if job_id is None or not tracing.active():
        return None
    with db.session() as session:
        carrier = session.scalar(sa.select(Job.trace_context).where(Job.id == job_id))
    return tracing.extract(carrier)


def _attempt(db: Database, settings: Settings, c: Claim, policy: RetryPolicy, timeout: float,
             schedule: Schedule | None, now: Callable[[], datetime], rand: Callable[[], float],
             resolver: Any) -> Outcome:
    message_id = c.message_id
    started = now()
    try:
        body, headers = _prepare(c, started)
    except signing.InvalidSecret as e:
        result = AttemptResult(started, 0.0, None, f"signing failed: {e}")
    else:
        result = send(c.url, body, headers, timeout=timeout, allow_private=settings.allow_private_urls,
                      resolver=resolver)
    status, retry_in, stale = record(db, c, result, policy=policy, rand=rand())
    wmetrics.WEBHOOK_ATTEMPTS.labels("delivered" if status == DELIVERED else
                                     "retrying" if status == PENDING else "failed").inc()
    wmetrics.WEBHOOK_SECONDS.observe(result.duration_seconds)
    log.info(
        "webhook %s attempt %d to %s: %s%s", message_id, c.attempt, c.url,
        "ok" if result.ok else result.error,
        f", retry in {retry_in:.1f} s" if retry_in is not None else f", {status}",
        extra={"message_id": message_id, "attempt": c.attempt, "status_code": result.status_code},
    )
    if retry_in is not None and schedule is not None and retry_in <= MAX_COUNTDOWN_SECONDS:
        schedule(message_id, retry_in)
    return Outcome(message_id, True, c.attempt, result, status, retry_in, stale)


def _due(now: datetime, grace_seconds: float, limit: int) -> sa.Select[Any]:
    m = WebhookMessage
    cutoff = now - timedelta(seconds=grace_seconds)
    return (
        sa.select(m.id)
        .where(
            m.status == PENDING,
            sa.or_(m.next_attempt_at <= cutoff, sa.and_(m.next_attempt_at.is_(None), m.created_at <= cutoff)),
        )
        .order_by(m.next_attempt_at)
        .limit(limit)
    )


def due_message_ids(db: Database, *, now: datetime, grace_seconds: float, limit: int = 1000) -> list[str]:
    """Pending messages that should have been attempted at least ``grace_seconds`` ago: a lost
    wake-up, a worker that died mid-attempt (its lease ran out), or a long retry wait."""
    with db.session() as session:
        return list(session.scalars(_due(now, grace_seconds, limit)))


def republish_due(
    db: Database, publish: Callable[[Iterable[str]], None], *, now: datetime, grace_seconds: float,
    limit: int = 1000,
) -> int:
    """For the periodic sweeper: wake up every overdue pending message (see :func:`due_message_ids`).

    The same UPDATE that picks them sets their ``next_attempt_at`` to ``now`` (still due), so two
    sweepers never pick the same message, and while a backlog lasts each message gets one extra
    wake-up per grace period rather than one per sweep. Duplicated wake-ups are harmless anyway
    (the claim is conditional). If publishing fails, the next sweep after the grace period retries.
    """
    m = WebhookMessage
    cutoff = now - timedelta(seconds=grace_seconds)
    with db.session() as session:
        # The UPDATE repeats the due condition, not only ``status``: between the subquery's
        # snapshot and the row lock a concurrent claim may have taken a lease (next_attempt_at in
        # the future); PostgreSQL re-checks the WHERE on the locked row, so the lease wins and
        # the message is not woken up (and attempted) a second time in parallel.
        ids = list(session.scalars(
            sa.update(m)
            .where(m.id.in_(_due(now, grace_seconds, limit).scalar_subquery()), m.status == PENDING,
                   sa.or_(m.next_attempt_at <= cutoff,
                          sa.and_(m.next_attempt_at.is_(None), m.created_at <= cutoff)))
            .values(next_attempt_at=now)
            .returning(m.id)
        ))
    if ids:
        publish(ids)
    return len(ids)


def publish_wakeup(publisher: Publisher, message_id: str, seconds: float) -> None:
    """Ask the broker to run ``deliver_webhook(message_id)`` in ``seconds`` (no thread waits).

    A failure to publish is logged, not raised: the message row already says when it is due, so
    the sweeper wakes it up instead.
    """
    try:
        publisher.app.send_task(
            TASK_WEBHOOK, args=[message_id], queue=QUEUE_IO, routing_key=QUEUE_IO, task_id=message_id,
            countdown=max(0.0, seconds), priority=publisher.broker_priority(0), retry=False,
        )
    except Exception as exc:
        log.warning("could not schedule webhook %s retry (the sweeper will): %s", message_id, exc)


def run(rt: Runtime, message_id: str) -> str:
    """The ``captionq.deliver_webhook`` task body: one attempt with this process's runtime.

    In a worker that also serves the gpu queue the attempt goes to a small pool of its own
    (:mod:`worker.webhooks.pool`) so that slow receivers never occupy the task threads caption
    jobs need; an io-only worker sends on the task thread itself.
    """
    if getattr(rt.publisher.app, "captionq_serves_gpu", False):
        if pool.shared().offer(lambda: attempt(rt, message_id)):
            return "handed to the webhook send pool"
        log.warning("webhook send pool full; %s is left for the sweeper", message_id)
        return "send pool full, left for the sweeper"
    return attempt(rt, message_id)


def attempt(rt: Runtime, message_id: str) -> str:
    outcome = deliver(rt.db, rt.settings, message_id,
                      schedule=lambda mid, seconds: publish_wakeup(rt.publisher, mid, seconds))
    if not outcome.claimed:
        return "not due"
    return f"attempt {outcome.attempt}: {outcome.status}"
