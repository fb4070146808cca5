"""worker.webhooks.delivery against the real PostgreSQL and a real receiver on 127.0.0.1.

These call :func:`deliver` directly (sleeping through the retry waits themselves); the Celery
path is in test_end_to_end.py.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from core.db import Database, utcnow
from core.settings import Settings
from jobs.tables import WebhookAttempt, WebhookMessage
from worker.webhooks.delivery import Outcome, claim, deliver, due_message_ids, record, republish_due
from worker.webhooks.schedule import RetryPolicy
from worker.webhooks.sender import AttemptResult

from .conftest import TenantInfo, add_message, make_settings
from .receiver import Answer, Receiver


def drive(db: Database, settings: Settings, msg_id: str, max_calls: int = 20) -> list[Outcome]:
    """Attempt until the message is delivered or given up, waiting out each retry delay."""
    out: list[Outcome] = []
    for _ in range(max_calls):
        o = deliver(db, settings, msg_id)
        out.append(o)
        if not o.claimed or o.retry_in is None:
            break
        time.sleep(o.retry_in)
    return out


def message(db: Database, msg_id: str) -> WebhookMessage:
    with db.session() as s:
        m = s.get(WebhookMessage, msg_id)
        assert m is not None
        return m


def attempts(db: Database, msg_id: str) -> list[WebhookAttempt]:
    with db.session() as s:
        return list(s.scalars(sa.select(WebhookAttempt).where(WebhookAttempt.message_id == msg_id)
                              .order_by(WebhookAttempt.id)))


def test_delivered_and_verified(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    with Receiver([tenant.secret]) as rx:
        msg_id = add_message(db, tenant.id, rx.url)
        (o,) = drive(db, settings, msg_id)
    assert o.claimed and o.status == "delivered" and o.attempt == 1
    (got,) = rx.received
    assert got.msg_id == msg_id and got.verified_with == [0]
    assert got.payload["type"] == "job.succeeded" and got.payload["data"]["status"] == "succeeded"
    m = message(db, msg_id)
    assert m.status == "delivered" and m.attempts == 1 and m.delivered_at is not None
    (a,) = attempts(db, msg_id)
    assert a.status_code == 200 and a.error is None and a.duration_ms is not None and a.duration_ms > 0
    # Another wake-up for a delivered message does nothing.
    assert not deliver(db, settings, msg_id).claimed
    assert len(rx.received) == 1


def test_500_twice_then_200_is_three_attempts_one_id(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    with Receiver([tenant.secret], script=[Answer(500), Answer(500)]) as rx:
        msg_id = add_message(db, tenant.id, rx.url)
        outcomes = drive(db, settings, msg_id)
    assert [o.status for o in outcomes] == ["pending", "pending", "delivered"]
    assert rx.ids() == [msg_id] * 3
    assert all(r.verified_with == [0] for r in rx.received)
    assert len({r.body for r in rx.received}) == 1  # byte-identical body on every retry
    assert [a.status_code for a in attempts(db, msg_id)] == [500, 500, 200]
    # The waits followed the schedule (0.2 s, 0.5 s; ±10 % jitter).
    gaps = [b.at - a.at for a, b in zip(rx.received, rx.received[1:], strict=False)]
    assert 0.15 < gaps[0] < 0.6 and 0.4 < gaps[1] < 0.9


def test_given_up_after_the_schedule(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    with Receiver([tenant.secret], default=Answer(503, body=b"down for maintenance")) as rx:
        msg_id = add_message(db, tenant.id, rx.url)
        outcomes = drive(db, settings, msg_id)
    assert len(outcomes) == 4 == RetryPolicy.from_settings(settings).max_attempts
    assert outcomes[-1].status == "failed" and outcomes[-1].retry_in is None
    m = message(db, msg_id)
    assert m.status == "failed" and m.attempts == 4 and m.last_error == "HTTP 503: down for maintenance"
    assert len(attempts(db, msg_id)) == 4 and len(rx.received) == 4
    assert not deliver(db, settings, msg_id).claimed


def test_not_due_yet_is_not_attempted(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    with Receiver([tenant.secret], script=[Answer(500)]) as rx:
        msg_id = add_message(db, tenant.id, rx.url)
        first = deliver(db, settings, msg_id)
        early = deliver(db, settings, msg_id)
    assert first.claimed and first.retry_in is not None
    assert not early.claimed
    assert len(rx.received) == 1


def test_concurrent_wakeups_send_one_attempt(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    with Receiver([tenant.secret], default=Answer(200, delay=0.3)) as rx:
        msg_id = add_message(db, tenant.id, rx.url)
        results: list[Outcome] = []
        barrier = threading.Barrier(8)

        def go() -> None:
            barrier.wait()
            results.append(deliver(db, settings, msg_id))

        threads = [threading.Thread(target=go) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(o.claimed for o in results) == 1
    assert len(rx.received) == 1
    assert message(db, msg_id).attempts == 1


def test_slow_receiver_times_out_and_is_retried(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    with Receiver([tenant.secret], script=[Answer(200, delay=2.0)]) as rx:
        msg_id = add_message(db, tenant.id, rx.url)
        t0 = time.monotonic()
        outcomes = drive(db, settings, msg_id)
        assert outcomes[0].result is not None and outcomes[0].result.error is not None
        assert outcomes[0].result.error.startswith("timeout")
        assert outcomes[0].result.duration_seconds < 1.5  # webhook_timeout_seconds = 1
        assert outcomes[-1].status == "delivered" and len(outcomes) == 2
        assert time.monotonic() - t0 < 4
        rx.wait_for(lambda r: len(r.received) == 2, 3)  # the slow answer lands late
    a = attempts(db, msg_id)
    assert a[0].status_code is None and a[1].status_code == 200


def test_redirect_is_a_failed_attempt(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    with Receiver([tenant.secret]) as target, Receiver([tenant.secret]) as redirector:
        redirector.default = Answer(302, headers=(("Location", target.url),))
        msg_id = add_message(db, tenant.id, redirector.url)
        outcomes = drive(db, settings, msg_id)
    assert outcomes[-1].status == "failed"
    assert target.received == []
    assert {a.status_code for a in attempts(db, msg_id)} == {302}
    assert "redirect not followed" in (message(db, msg_id).last_error or "")


def test_private_address_refused_without_setting(migrated_url: str, tenant: TenantInfo) -> None:
    strict = make_settings(migrated_url, allow_private_urls=False, webhook_retry_schedule="0")
    db = Database(strict)
    try:
        with Receiver([tenant.secret]) as rx:
            msg_id = add_message(db, tenant.id, rx.url)
            outcomes = drive(db, strict, msg_id)
    finally:
        db.dispose()
    assert rx.received == []
    assert [o.status for o in outcomes] == ["pending", "failed"]
    errs = [a.error or "" for a in attempts(Database(strict), msg_id)]
    assert all(e.startswith("url_not_allowed") and "loopback" in e for e in errs)


def test_retry_after_is_honoured(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    with Receiver([tenant.secret], script=[Answer(429, headers=(("Retry-After", "1"),))]) as rx:
        msg_id = add_message(db, tenant.id, rx.url)
        first = deliver(db, settings, msg_id)
        assert first.retry_in is not None and first.retry_in >= 1.0  # schedule says ~0.2 s
        due = message(db, msg_id).next_attempt_at
        assert due is not None and (due - utcnow()).total_seconds() > 0.7
        time.sleep(first.retry_in)
        drive(db, settings, msg_id)
    assert [r.answered for r in rx.received] == [429, 200]


def test_rotation_sends_both_signatures(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    from jobs.tenants import rotate_webhook_secret

    with db.session() as s:
        new_secret = rotate_webhook_secret(s, tenant.id, 3600)
    with Receiver([tenant.secret]) as old_rx, Receiver([new_secret]) as new_rx:
        a = add_message(db, tenant.id, old_rx.url)
        b = add_message(db, tenant.id, new_rx.url)
        drive(db, settings, a)
        drive(db, settings, b)
    for rx in (old_rx, new_rx):
        (got,) = rx.received
        assert len(got.signature.split(" ")) == 2
        assert got.verified_with == [0]
    # Grace over: one signature, the new secret only.
    with db.session() as s:
        rotate_webhook_secret(s, tenant.id, 0)
    with db.session() as s:
        from jobs.tables import Tenant

        current = s.get(Tenant, tenant.id).webhook_secret  # type: ignore[union-attr]
    with Receiver([current, new_secret]) as rx:
        drive(db, settings, add_message(db, tenant.id, rx.url))
    (got,) = rx.received
    assert len(got.signature.split(" ")) == 1 and got.verified_with == [0]


def test_stale_worker_does_not_overwrite_newer_state(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    """A worker whose lease ran out records its attempt but leaves the message to the newer one."""
    msg_id = add_message(db, tenant.id, "http://127.0.0.1:9/unused")
    policy = RetryPolicy.from_settings(settings)
    first = claim(db, msg_id, now=utcnow(), lease_seconds=0)  # lease over at once
    second = claim(db, msg_id, now=utcnow() + timedelta(seconds=2), lease_seconds=60)
    assert first is not None and second is not None and (first.attempt, second.attempt) == (1, 2)
    ok = AttemptResult(utcnow(), 0.01, 200, None)
    assert record(db, second, ok, policy=policy, rand=0.5) == ("delivered", None, False)
    late = AttemptResult(utcnow(), 0.01, 500, "HTTP 500")
    _status, retry_in, stale = record(db, first, late, policy=policy, rand=0.5)
    assert stale and retry_in is None
    m = message(db, msg_id)
    assert m.status == "delivered" and m.attempts == 2
    assert [a.status_code for a in attempts(db, msg_id)] == [200, 500]


def test_sweeper_finds_lost_and_overdue_messages(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    lost = add_message(db, tenant.id, "http://127.0.0.1:9/lost")
    in_flight = add_message(db, tenant.id, "http://127.0.0.1:9/busy")
    assert claim(db, in_flight, now=utcnow(), lease_seconds=60) is not None
    later = utcnow() + timedelta(seconds=31)
    due = due_message_ids(db, now=later, grace_seconds=30, limit=10_000)
    assert lost in due and in_flight not in due
    assert lost not in due_message_ids(db, now=utcnow(), grace_seconds=30, limit=10_000)
    published: list[str] = []
    n = republish_due(db, published.extend, now=later, grace_seconds=30, limit=10_000)
    assert n == len(published) and lost in published and in_flight not in published
    # Picked once per grace period: the next sweep a moment later leaves it alone...
    again: list[str] = []
    republish_due(db, again.extend, now=later + timedelta(seconds=1), grace_seconds=30, limit=10_000)
    assert lost not in again
    # ...but it is still due for the wake-up just published.
    assert claim(db, lost, now=later, lease_seconds=60) is not None


def test_local_mode_database_sqlite(tmp_path: Path) -> None:
    """The same claim/record SQL on SQLite, the local mode's database."""
    from core.migrate import upgrade

    from .conftest import create_tenant

    lite = make_settings(f"sqlite:///{tmp_path / 'captionq.db'}")
    upgrade(lite)
    db = Database(lite)
    try:
        tenant = create_tenant(db)
        with Receiver([tenant.secret], script=[Answer(500)]) as rx:
            msg_id = add_message(db, tenant.id, rx.url)
            outcomes = drive(db, lite, msg_id)
            assert [o.status for o in outcomes] == ["pending", "delivered"]
            assert not deliver(db, lite, msg_id).claimed
        assert rx.ids() == [msg_id, msg_id] and all(r.verified_with == [0] for r in rx.received)
        assert [a.status_code for a in attempts(db, msg_id)] == [500, 200]
        assert due_message_ids(db, now=utcnow() + timedelta(hours=1), grace_seconds=0) == []
    finally:
        db.dispose()


def test_sweeper_wakeup_yields_to_a_concurrent_lease(
    db: Database, settings: Settings, tenant: TenantInfo
) -> None:
    """A claim that takes the lease while the sweeper's UPDATE waits for the row keeps it: the
    sweeper re-checks that the message is still due on the row it locked, so it neither wakes the
    message up a second time nor overwrites the lease (two parallel attempts)."""
    msg_id = add_message(db, tenant.id, "http://127.0.0.1:9/raced")
    now = utcnow()
    m = WebhookMessage
    woken: list[str] = []
    with db.engine.connect() as holder:
        # The claim's UPDATE, left uncommitted: it holds the row lock.
        holder.execute(sa.update(m).where(m.id == msg_id).values(
            attempts=m.attempts + 1, next_attempt_at=now + timedelta(seconds=60)))
        sweeper = threading.Thread(target=lambda: republish_due(
            db, woken.extend, now=now + timedelta(seconds=31), grace_seconds=30, limit=10_000))
        sweeper.start()
        time.sleep(0.5)  # the sweeper's UPDATE is now waiting for the lock
        holder.commit()
    sweeper.join(10)
    assert not sweeper.is_alive()
    assert msg_id not in woken
    lease = message(db, msg_id).next_attempt_at
    assert lease is not None and lease >= now + timedelta(seconds=59)
