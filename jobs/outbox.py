"""The transactional outbox: Celery messages written in the same transaction as the state change
that causes them, sent after that transaction commits, deleted once sent.

If the process dies or the broker is down between commit and send, the rows stay; the sweeper
re-publishes rows older than ``settings.outbox_grace_seconds``. A message may therefore be sent
twice; every consumer is idempotent (conditional transitions, ``task_id`` = the job id).

A batch is not 100,000 outbox rows: its insert writes ONE ``dispatch_batch`` row per model in the
batch (args ``[batch_id, after_seq, model]``; rows from before models have no model and stand for
every job) that stands for the caption message of every queued job of that model in it.
Publishing that row walks those jobs in submission order (keyset on ``seq``, only those still
``queued``), sends their messages to the model's queue in pipelined chunks, and records its
progress (the last ``seq`` sent, and a fresh ``created_at`` so the sweeper leaves a dispatch in
progress alone) after each chunk; the row is deleted at the end. If the process dies half-way,
the sweeper resumes from the recorded position (a chunk may be sent twice: harmless). The
dispatch row is handled here and never sent to the broker itself.

A dispatch is bounded by ``settings.dispatch_window``: it sends only while fewer than that many of
the batch's dispatched jobs of its model are still waiting to start (so a model whose workers are
busy or gone never holds back another model's jobs of the same batch), and otherwise keeps its
row, which every sweep tops up again (:func:`top_up_dispatches`). So a batch of millions of jobs holds at most
about a window of messages in the broker (~0.8 KB each in Redis) instead of all of them; the
rest wait in SQL, in order, where a canceled batch's jobs also never reach the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.db import Database, utcnow
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
from jobs.states import JobStatus
from jobs.tables import Job, Outbox

if TYPE_CHECKING:
    from jobs.outbox_cleaner import OutboxCleaner

log = logging.getLogger(__name__)

CHUNK = 1000
DISPATCH_CHUNK = 5000
# Not a Celery task: an outbox row meaning "publish every queued job of batch args[0] after seq args[1]".
DISPATCH_BATCH = "captionq.outbox.dispatch_batch"


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
    """The dispatch of a batch's jobs of ``model`` (None: all of them): one per model in the
    batch, so that each model's window fills and drains with its own workers."""
    if model is None:
        return Message(DISPATCH_BATCH, [batch_id, -1], QUEUE_GPU, f"{batch_id}-dispatch", 0)
    return Message(DISPATCH_BATCH, [batch_id, -1, model], caption_queue(model),
                   f"{batch_id}-dispatch-{model}"[:60], 0)


def dispatch_model(args: Sequence[object]) -> str | None:
    """The model of a dispatch row's ``args`` (``[batch_id, after_seq]`` from before models:
    every job of the batch)."""
    return str(args[2]) if len(args) > 2 and args[2] is not None else None


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


def publish(db: Database, publisher: Publisher | None, outbox_ids: Iterable[int], window: int = 0) -> int:
    """Send the given outbox rows (those still present) and delete them (a batch dispatch row:
    its first ``window`` messages, see :func:`dispatch_batch`). Returns how many messages were
    sent; on a broker error logs and returns what was done so far (the rest waits for the
    sweeper)."""
    if publisher is None:
        return 0
    sent = 0
    ids = list(outbox_ids)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        with db.session() as session:
            rows = session.scalars(sa.select(Outbox).where(Outbox.id.in_(chunk)).order_by(Outbox.id)).all()
            messages = [_to_message(r) for r in rows if r.task != DISPATCH_BATCH]
            dispatches = [(r.id, r.args[0], int(r.args[1]), dispatch_model(r.args))
                          for r in rows if r.task == DISPATCH_BATCH]
        try:
            if messages:
                publisher.send_many(messages, chunk=CHUNK)
        except Exception as exc:  # broker down: leave the rows for the sweeper
            log.warning("publishing %d outbox messages failed, sweeper retries: %s", len(messages), exc)
            return sent
        if messages:
            delete_rows(db, [m.outbox_id for m in messages if m.outbox_id is not None])
            sent += len(messages)
        for row_id, batch_id, after_seq, model in dispatches:
            try:
                sent += dispatch_batch(db, publisher, row_id, batch_id, after_seq, window, model)
            except Exception as exc:
                log.warning("dispatching batch %s stopped, sweeper resumes: %s", batch_id, exc)
                return sent
    return sent


def publish_messages(db: Database, publisher: Publisher | None, messages: Sequence[Message],
                     window: int = 0, cleaner: OutboxCleaner | None = None) -> int:
    """Send messages whose outbox rows (``outbox_id``) the caller just committed, then delete
    those rows (through ``cleaner``, off the caller's path, when given). On a broker error the
    rows stay for the sweeper."""
    if publisher is None or not messages:
        return 0
    plain = [m for m in messages if m.task != DISPATCH_BATCH]
    if len(plain) != len(messages):  # a batch dispatch: take the general path
        return publish(db, publisher, [m.outbox_id for m in messages if m.outbox_id is not None], window)
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


def waiting_dispatched(session: Session, batch_id: str, after_seq: int, window: int,
                       model: str | None = None) -> int:
    """How many of the batch's jobs (of ``model``, when given) up to ``after_seq`` (dispatched)
    are still queued, i.e. have a message waiting in the broker. Jobs start roughly in
    submission order, so only the last
    ``2 * window`` dispatched are counted: a bounded index range, not the whole batch (an
    older straggler is missed, which only lets the window overshoot by that much)."""
    return int(session.scalar(
        sa.select(sa.func.count()).select_from(Job).where(
            Job.batch_id == batch_id, Job.seq > after_seq - 2 * window, Job.seq <= after_seq,
            Job.status == JobStatus.QUEUED.value, *of_model(model))
    ) or 0)


def of_model(model: str | None) -> list[sa.ColumnElement[bool]]:
    """The condition "a job of ``model``" (none for None: every model)."""
    return [] if model is None else [Job.model == model]


def dispatch_batch(db: Database, publisher: Publisher, row_id: int, batch_id: str, after_seq: int,
                   window: int = 0, model: str | None = None) -> int:
    """Publish the caption messages of ``batch_id``'s queued jobs (of ``model``, when given)
    after ``after_seq``, in submission order, each to its model's queue, recording progress on
    outbox row ``row_id``; delete the row when every
    job is dispatched. With ``window`` > 0, stop once ``window`` dispatched jobs are waiting to
    start and keep the row for the next top-up. Returns how many messages were sent."""
    sent = 0
    while True:
        undispatched = (sa.select(Job.id, Job.seq, Job.priority, Job.model)
                        .where(Job.batch_id == batch_id, Job.seq > after_seq,
                               Job.status == JobStatus.QUEUED.value, *of_model(model))
                        .order_by(Job.seq))
        with db.session() as session:
            room = DISPATCH_CHUNK
            if window > 0:
                room = min(room, window - waiting_dispatched(session, batch_id, after_seq, window, model))
            # With no room, one row still says whether anything is left for a later top-up.
            rows = session.execute(undispatched.limit(max(room, 1))).all()
        if not rows:  # every job dispatched (or no longer queued): the dispatch is done
            with db.session() as session:
                session.execute(sa.delete(Outbox).where(Outbox.id == row_id))
            return sent
        if room <= 0:  # the window is full: the row stays for the next top-up
            return sent
        publisher.send_many([caption_message(r.id, r.priority, r.model) for r in rows], chunk=CHUNK)
        sent += len(rows)
        after_seq = rows[-1].seq
        with db.session() as session:
            now = utcnow()
            args = [batch_id, after_seq] if model is None else [batch_id, after_seq, model]
            session.execute(sa.update(Outbox).where(Outbox.id == row_id).values(args=args, created_at=now))
            # The sweeper's re-send of lost messages counts from here, not from the batch's
            # submission (jobs/recovery.py); a job not stamped yet has not been sent.
            session.execute(sa.update(Job).where(Job.id.in_([r.id for r in rows]))
                            .values(dispatched_at=now))


def top_up_dispatches(db: Database, publisher: Publisher, window: int,
                      older_than: datetime | None = None, limit: int = 1000) -> int:
    """The sweeper's part for batch dispatches: each dispatch row (of any age when ``window`` >
    0; else only those untouched since ``older_than``, i.e. abandoned) is continued, up to its
    window. A dispatch in progress elsewhere may then send a chunk twice, which consumers
    tolerate. Returns how many messages were sent."""
    query = sa.select(Outbox.id, Outbox.args).where(Outbox.task == DISPATCH_BATCH)
    if older_than is not None:
        query = query.where(Outbox.created_at <= older_than)
    with db.session() as session:
        rows = session.execute(query.order_by(Outbox.id).limit(limit)).all()
    sent = 0
    for row_id, args in rows:
        try:
            sent += dispatch_batch(db, publisher, row_id, args[0], int(args[1]), window, dispatch_model(args))
        except Exception as exc:
            log.warning("dispatching batch %s stopped, next sweep resumes: %s", args[0], exc)
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
    "CHUNK", "DISPATCH_BATCH", "QUEUE_GPU", "QUEUE_IO", "Outbox", "add", "caption_message", "dispatch_batch",
    "dispatch_message", "dispatch_model", "export_message", "finalize_message", "of_model", "pending_ids",
    "publish", "publish_messages", "republish_stale", "top_up_dispatches", "waiting_dispatched",
    "webhook_message",
]
