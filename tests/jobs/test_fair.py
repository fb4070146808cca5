"""The fair-share policy (jobs.fair): pure functions, no services."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from jobs import fair
from jobs.fair import Candidate, Clock

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def backlog(tenant: str, n: int, *, priority: int = 0, at: datetime = T0) -> list[Candidate]:
    return [Candidate(f"{tenant}-{i}", tenant, priority, at, i) for i in range(n)]


def tenants_of(chosen: list[Candidate]) -> list[str]:
    return [c.tenant_id for c in chosen]


def run(clock: Clock, waiting: dict[str, list[Candidate]], weights: dict[str, float], rounds: int,
        room: int, now: datetime = T0) -> list[Candidate]:
    """Several dispatches in a row, each shown each tenant's next ``room + 1`` jobs (in order) and
    removing what it handed out, as the SQL side does."""
    out: list[Candidate] = []
    at = dict.fromkeys(waiting, 0)
    for _ in range(rounds):
        heads = {t: jobs[at[t]:at[t] + room + 1] for t, jobs in waiting.items()}
        got = fair.pick(clock, heads, weights, room, now, aging_seconds=60)
        for c in got:
            at[c.tenant_id] += 1
        out += got
    return out


@pytest.mark.parametrize(("wa", "wb"), [(1, 1), (3, 1), (1, 4), (2.5, 1)])
def test_backlogged_tenants_get_jobs_in_proportion_to_their_weights(wa: float, wb: float) -> None:
    got = run(Clock(), {"a": backlog("a", 5000), "b": backlog("b", 5000)}, {"a": wa, "b": wb},
              rounds=40, room=25)
    counts = Counter(tenants_of(got))
    assert counts["a"] + counts["b"] == 1000
    assert counts["a"] / 1000 == pytest.approx(wa / (wa + wb), abs=0.002)
    # ... and at every prefix, not only on average: never more than one job off its share.
    seen: Counter[str] = Counter()
    for i, t in enumerate(tenants_of(got), 1):
        seen[t] += 1
        assert abs(seen["a"] - i * wa / (wa + wb)) <= 1.0 + 1e-9


def test_a_newcomer_goes_next_however_long_the_backlog_ahead() -> None:
    clock = Clock()
    waiting = {"a": backlog("a", 100_000)}
    run(clock, waiting, {}, rounds=200, room=50)  # 10,000 of A's jobs handed out already
    got = fair.pick(clock, {"a": backlog("a", 100), "b": backlog("b", 3)}, {}, 4, T0, 60)
    assert tenants_of(got)[:2] in (["b", "a"], ["a", "b"])
    assert tenants_of(got).count("b") == 2  # alternating from its first job on


def test_an_idle_tenant_saves_no_credit() -> None:
    clock = Clock()
    run(clock, {"a": backlog("a", 1000), "b": backlog("b", 1000)}, {}, rounds=10, room=20)
    # B leaves for a long while, A alone runs on.
    run(clock, {"a": backlog("a", 10_000)}, {}, rounds=100, room=50)
    got = fair.pick(clock, {"a": backlog("a", 100), "b": backlog("b", 100)}, {}, 40, T0, 60)
    assert Counter(tenants_of(got)) == {"a": 20, "b": 20}  # no burst to "catch up"


def test_within_a_tenant_priority_then_age() -> None:
    jobs = [Candidate("old-low", "a", 0, T0 - timedelta(seconds=10), 1),
            Candidate("new-high", "a", 5, T0, 2),
            Candidate("old-high", "a", 5, T0 - timedelta(seconds=5), 3),
            Candidate("new-low", "a", 0, T0, 4)]
    got = fair.pick(Clock(), {"a": jobs}, {}, 4, T0, aging_seconds=0)
    assert [c.job_id for c in got] == ["old-high", "new-high", "old-low", "new-low"]


def test_ties_keep_submission_order() -> None:
    got = fair.pick(Clock(), {"a": list(reversed(backlog("a", 10)))}, {}, 10, T0, 60)
    assert [c.seq for c in got] == list(range(10))


def test_aging_lets_an_old_job_pass_newer_higher_priority_ones() -> None:
    old = Candidate("old", "a", 0, T0 - timedelta(seconds=601), 0)
    fresh = [Candidate(f"p9-{i}", "a", 9, T0, i + 1) for i in range(5)]
    # Ten minutes at 60 s a level: priority 0 has become 10.01 > 9.
    assert fair.pick(Clock(), {"a": [*fresh, old]}, {}, 1, T0, aging_seconds=60)[0].job_id == "old"
    # Younger than that, the priority-9 jobs still go first.
    younger = Candidate("younger", "a", 0, T0 - timedelta(seconds=500), 0)
    assert fair.pick(Clock(), {"a": [*fresh, younger]}, {}, 1, T0, aging_seconds=60)[0].job_id == "p9-0"


def test_nothing_starves_under_a_steady_stream_of_high_priority_work() -> None:
    """A low-priority job keeps waiting while priority-9 jobs arrive as fast as they are handed
    out; with aging it is handed out within a bounded time, without it never."""
    for aging, expect_out in ((30.0, True), (0.0, False)):
        clock, now = Clock(), T0
        waiting = [Candidate("low", "a", 0, T0, 0)]
        handed: list[str] = []
        for step in range(400):  # one pick a second
            now = T0 + timedelta(seconds=step)
            waiting.append(Candidate(f"hi-{step}", "a", 9, now, step + 1))
            got = fair.pick(clock, {"a": waiting}, {}, 1, now, aging)
            handed += [c.job_id for c in got]
            waiting = [c for c in waiting if c not in got]
        assert ("low" in handed) is expect_out
        if expect_out:
            assert handed.index("low") <= 9 * aging + 2  # once its age is worth nine levels


def test_room_and_empty_input() -> None:
    assert fair.pick(Clock(), {}, {}, 10, T0, 60) == []
    assert fair.pick(Clock(), {"a": backlog("a", 5)}, {}, 0, T0, 60) == []
    assert len(fair.pick(Clock(), {"a": backlog("a", 5), "b": []}, {}, 10, T0, 60)) == 5


def test_replay_matches_pick_and_pick_is_deterministic() -> None:
    rng = random.Random(7)
    waiting = {t: backlog(t, rng.randint(1, 30), priority=rng.randint(0, 9)) for t in "abcde"}
    weights = {t: rng.choice([0.5, 1, 2, 3]) for t in "abcde"}
    start = Clock(3.0, {"a": 5.0, "c": 1.0})
    c1, c2 = Clock(start.vtime, dict(start.finish)), Clock(start.vtime, dict(start.finish))
    got = fair.pick(c1, waiting, weights, 40, T0, 60)
    assert got == fair.pick(c2, waiting, weights, 40, T0, 60)
    again = fair.replay(start, tenants_of(got), weights)
    assert (again.vtime, again.finish) == (c1.vtime, c1.finish)
    assert start.finish == {"a": 5.0, "c": 1.0}  # replay leaves its input alone


def test_weights_must_be_positive() -> None:
    assert fair.check_weight(3) == 3.0
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            fair.check_weight(bad)


def test_exhausted() -> None:
    assert fair.exhausted({}, 11)
    assert fair.exhausted({0: 10, 5: 3}, 11)
    assert not fair.exhausted({0: 10, 5: 11}, 11)
