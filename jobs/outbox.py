"""The transactional outbox: Celery messages written in the same transaction as the state change
that causes them, sent after that transaction commits, deleted once sent.

If the process dies or the broker is down between commit and send, the rows stay; the sweeper
re-publishes rows older than ``settings.outbox_grace_seconds``. A message may therefore be sent
twice; every consumer is idempotent (conditional transitions, ``task_id`` = the job id).

A batch is not 100,000 outbox rows: its insert writes ONE ``dispatch_batch`` row per model in the
batch, on that model's queue (``jobs.queue.caption_queue``), meaning "this batch has jobs waiting
in SQL for this queue". Publishing that row runs the fair dispatcher (:mod:`jobs.fair_dispatch`),
which sends the waiting jobs of every tenant, chosen by weight, priority and age, up to
``dispatch_window`` messages in the model's queue (so a model whose workers are busy or gone
never holds back another model's jobs); each worker claim and each sweep tops the window up
again (:func:`top_up_dispatches`), and the row is deleted once none of its tenant's jobs waits
any more. The dispatch row is never sent to the broker itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.db import Database, utcnow
from jobs.fair_dispatch import DISPATCH_BATCH, FairConfig, dispatch, dispatch_queues
from jobs.queue import (
    QUEUE_GPU,
    QUEUE_IO,
    TASK_CAPTION,
    TASK_EXPORT,
    TASK_FINALIZE,
    TASK_WEBHOOK,
    Message,
    Publisher,
    caption_queue,
)
from jobs.tables import Outbox

if TYPE_CHECKING:
    from jobs.outbox_cleaner import OutboxCleaner

log = logging.getLogger(__name__)

CHUNK = 1000
# A dispatch row's publish waits this long for another dispatcher of its queue to finish (it may
# have looked for waiting batches before this one was committed).
DISPATCH_WAIT_SECONDS = 2.0


def caption_message(job_id: str, priority: int, model: str | None = None) -> Message:
    """The caption message of a job, on its model's queue (``jobs.queue.caption_queue``)."""
    return Message(TASK_CAPTION, [job_id], caption_queue(model), job_id, priority)


def webhook_message(message_id: str) -> Message:
    return Message(TASK_WEBHOOK, [message_id], QUEUE_IO, message_id, 0)


def finalize_message(batch_id: str) -> Message:
    return Message(TASK_FINALIZE, [batch_id], QUEUE_IO, f"{batch_id}-finalize", 0)


def export_message(batch_id: str, ended_parts: int) -> Message:
    """Write the output parts that are complete now; one message per part boundary crossed."""
    return Message(TASK_EXPORT, [batch_id], QUEUE_IO, f"{batch_id}-export-{ended_parts}", 0)


def dispatch_message(batch_id: str, model: str | None = None) -> Message:
    """The dispatch row of a batch's jobs of ``model`` (None: jobs that name none), on that
    model's queue: one per model in the batch, so each model's window fills and drains with its
    own workers."""
    suffix = f"-{model}" if model is not None else ""
    task_id = f"{batch_id}-dispatch{suffix}"[:60]
    return Message(DISPATCH_BATCH, [batch_id, -1], caption_queue(model), task_id, 0)


def add(session: Session, messages: Sequence[Message], now: datetime | None = None) -> list[int]:
    """Insert outbox rows (one bulk INSERT); returns their ids in order."""
    if not messages:
        return []
    now = now or utcnow()
    rows = [
        {"task": m.task, "args": m.args, "queue": m.queue, "task_id": m.task_id,
         "priority": m.priority, "created_at": now}
        for m in messages
    ]
    # A Core INSERT on the table: the ORM's bulk-insert machinery adds ~0.3 ms to every submit.
    table: sa.Table = Outbox.__table__  # type: ignore[assignment]
    result = session.execute(sa.insert(table).returning(table.c.id, sort_by_parameter_order=True), rows)
    return list(result.scalars())


def publish(db: Database, publisher: Publisher | None, outbox_ids: Iterable[int],
            fair: FairConfig | None = None) -> int:
    """Send the given outbox rows (those still present) and delete them; a batch dispatch row
    runs a dispatch of its queue instead (``fair``: the window and policy; None: no window).
    Returns how many messages were sent; on a broker error logs and returns what was done so far
    (the rest waits for the sweeper)."""
    if publisher is None:
        return 0
    sent = 0
    ids = list(outbox_ids)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        with db.session() as session:
            rows = session.scalars(sa.select(Outbox).where(Outbox.id.in_(chunk)).order_by(Outbox.id)).all()
            messages = [_to_message(r) for r in rows if r.task != DISPATCH_BATCH]
            queues = sorted({r.queue for r in rows if r.task == DISPATCH_BATCH})
        try:
            if messages:
                publisher.send_many(messages, chunk=CHUNK)
        except Exception as exc:  # broker down: leave the rows for the sweeper
            log.warning("publishing %d outbox messages failed, sweeper retries: %s", len(messages), exc)
            return sent
        if messages:
            delete_rows(db, [m.outbox_id for m in messages if m.outbox_id is not None])
            sent += len(messages)
        for queue in queues:
            try:
                sent += dispatch(db, publisher, fair or FairConfig(window=0), queue,
                                 wait_seconds=DISPATCH_WAIT_SECONDS) or 0
            except Exception as exc:
                log.warning("dispatching queue %s stopped, the sweeper resumes: %s", queue, exc)
                return sent
    return sent


def publish_messages(db: Database, publisher: Publisher | None, messages: Sequence[Message],
                     fair: FairConfig | None = None, cleaner: OutboxCleaner | None = None) -> int:
    """Send messages whose outbox rows (``outbox_id``) the caller just committed, then delete
    those rows (through ``cleaner``, off the caller's path, when given). On a broker error the
    rows stay for the sweeper."""
    if publisher is None or not messages:
        return 0
    plain = [m for m in messages if m.task != DISPATCH_BATCH]
    if len(plain) != len(messages):  # a batch dispatch: take the general path
        return publish(db, publisher, [m.outbox_id for m in messages if m.outbox_id is not None], fair)
    try:
        publisher.send_many(plain, chunk=CHUNK)
    except Exception as exc:
        log.warning("publishing %d outbox messages failed, sweeper retries: %s", len(plain), exc)
        return 0
    done = [m.outbox_id for m in plain if m.outbox_id is not None]
    if cleaner is not None:
        cleaner.discard(done)
    else:
        delete_rows(db, done)
    return len(plain)


def delete_rows(db: Database, ids: list[int]) -> None:
    """Forget published rows. Not worth an fsync: losing this commit in a crash only means the
    sweeper sends those messages once more, which every consumer tolerates."""
    with db.session() as session:
        if db.dialect == "postgresql":
            session.execute(sa.text("SET LOCAL synchronous_commit = off"))
        session.execute(sa.delete(Outbox).where(Outbox.id.in_(ids)))


def top_up_dispatches(db: Database, publisher: Publisher, fair: FairConfig) -> int:
    """The sweeper's part for batch dispatches: a dispatch of every queue with batch jobs waiting
    in SQL (one held by another dispatcher, e.g. a second sweeper, is left to it). Returns how
    many messages were sent."""
    sent = 0
    for queue in dispatch_queues(db):
        try:
            sent += dispatch(db, publisher, fair, queue) or 0
        except Exception as exc:
            log.warning("dispatching queue %s stopped, next sweep resumes: %s", queue, exc)
            break
    return sent


def pending_ids(session: Session, older_than: datetime, limit: int) -> list[int]:
    """Plain message rows committed before ``older_than`` (batch dispatches: top_up_dispatches)."""
    return list(session.scalars(
        sa.select(Outbox.id).where(Outbox.created_at <= older_than, Outbox.task != DISPATCH_BATCH)
        .order_by(Outbox.id).limit(limit)
    ))


def republish_stale(db: Database, publisher: Publisher, grace_seconds: float, limit: int = 50_000,
                    now: datetime | None = None) -> int:
    """The sweeper's part: send rows committed more than ``grace_seconds`` ago and still here."""
    cutoff = (now or utcnow()) - timedelta(seconds=grace_seconds)
    with db.session() as session:
        ids = pending_ids(session, cutoff, limit)
    return publish(db, publisher, ids)


def _to_message(row: Outbox) -> Message:
    return Message(row.task, list(row.args), row.queue, row.task_id, row.priority, row.id)


__all__ = [
    "CHUNK", "DISPATCH_BATCH", "QUEUE_GPU", "QUEUE_IO", "TASK_CAPTION", "FairConfig", "Outbox", "add",
    "caption_message", "dispatch_message", "export_message", "finalize_message", "pending_ids", "publish",
    "publish_messages", "republish_stale", "top_up_dispatches", "webhook_message",
]
