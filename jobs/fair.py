"""Weighted fair scheduling of queued work across tenants: the policy, with no I/O.

The dispatcher (:mod:`jobs.fair_dispatch`) asks this module which waiting jobs enter a GPU queue
next; everything here is a pure function of what it is given, so it is tested without services.

**Across tenants: virtual time (start-time fair queueing).** Each tenant ``t`` of a queue has a
weight ``w_t`` (its share of the GPU slots) and a *finish tag* ``F_t``: the virtual time at which
the job it was last handed would end if every job cost one unit of work. The queue has a clock
``V``: the start tag of the job handed out last. A tenant with waiting jobs would start its next
job at ``S_t = max(F_t, V)``; the tenant with the smallest ``S_t`` goes next, and is then charged
``F_t = S_t + 1 / w_t`` while ``V = S_t``. Over any stretch in which tenants stay backlogged, each
gets jobs in proportion to its weight (within one job), whatever their arrival order. A tenant
that had nothing waiting rejoins at ``S_t = V``: it gets no credit for the time it was idle, so
it cannot lock others out by saving up, and its first job goes out within one round of the
others: ``V`` is never ahead of any backlogged tenant's start tag.

Deficit round robin gives the same shares; virtual time was chosen because its whole state is
one number per tenant and one per queue, which the dispatcher keeps in SQL and updates in the
same transaction as the jobs it hands out, so a dispatcher running on another host continues the
same schedule.

**Within a tenant: priority, then age, with aging.** A job's *effective priority* is its priority
(0..9) plus its age in units of ``aging_seconds``: a job waiting ``aging_seconds`` longer than
another ranks one priority level higher. Nothing starves: any job eventually outranks every job
submitted after it. Ties go to the older job, then to submission order (``seq``).

The unit of work is one job: tenants share jobs started, which is their share of GPU slots when
their jobs are alike. A tenant's share of GPU time can differ from its weight when its jobs are
much longer than another's (jobs are not sized before they run).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

PRIORITY_LEVELS = range(10)


@dataclass(frozen=True)
class Candidate:
    """A queued job that has not entered the broker yet."""

    job_id: str
    tenant_id: str
    priority: int
    created_at: datetime
    seq: int = 0


@dataclass
class Clock:
    """A queue's fair-share state: the clock ``V`` and each tenant's finish tag ``F_t``."""

    vtime: float = 0.0
    finish: dict[str, float] = field(default_factory=dict)

    def start_tag(self, tenant_id: str) -> float:
        return max(self.finish.get(tenant_id, 0.0), self.vtime)

    def charge(self, tenant_id: str, weight: float) -> None:
        """One job of ``tenant_id`` was handed out."""
        start = self.start_tag(tenant_id)
        self.vtime = start
        self.finish[tenant_id] = start + 1.0 / weight


def check_weight(weight: float) -> float:
    """A tenant's weight: a positive, finite number (a share, not a count)."""
    w = float(weight)
    if not (0.0 < w < float("inf")):
        raise ValueError("a weight must be a positive number")
    return w


def effective_priority(priority: int, age_seconds: float, aging_seconds: float) -> float:
    """``priority`` raised by one level per ``aging_seconds`` waited (no aging when <= 0)."""
    if aging_seconds <= 0:
        return float(priority)
    return priority + max(0.0, age_seconds) / aging_seconds


def order_within_tenant(candidates: Iterable[Candidate], now: datetime,
                        aging_seconds: float) -> list[Candidate]:
    """A tenant's waiting jobs in the order it should get them: effective priority, then age,
    then submission order."""
    def key(c: Candidate) -> tuple[float, datetime, int, str]:
        age = (now - c.created_at).total_seconds()
        return (-effective_priority(c.priority, age, aging_seconds), c.created_at, c.seq, c.job_id)

    return sorted(candidates, key=key)


def pick(clock: Clock, waiting: Mapping[str, Sequence[Candidate]], weights: Mapping[str, float],
         room: int, now: datetime, aging_seconds: float, default_weight: float = 1.0) -> list[Candidate]:
    """Hand out up to ``room`` of the ``waiting`` jobs (per tenant, any order), charging ``clock``
    for each. Returns them in the order chosen."""
    lanes = {t: order_within_tenant(jobs, now, aging_seconds) for t, jobs in waiting.items() if jobs}
    taken = {t: 0 for t in lanes}
    # A heap of (start tag, finish tag if picked, tenant): the next tenant is the smallest start
    # tag; on a tie the one that would finish first (the larger weight), then the tenant id.
    heap: list[tuple[float, float, str]] = []

    def push(t: str) -> None:
        s = clock.start_tag(t)
        heapq.heappush(heap, (s, s + 1.0 / weights.get(t, default_weight), t))

    for t in lanes:
        push(t)
    chosen: list[Candidate] = []
    while heap and len(chosen) < room:
        _, _, t = heapq.heappop(heap)
        chosen.append(lanes[t][taken[t]])
        taken[t] += 1
        clock.charge(t, weights.get(t, default_weight))
        if taken[t] < len(lanes[t]):
            push(t)
        # Other tenants' tags cannot change (V only grows to the picked start tag, which is the
        # smallest), so their heap entries stay valid.
    return chosen


def replay(clock: Clock, tenants: Iterable[str], weights: Mapping[str, float],
           default_weight: float = 1.0) -> Clock:
    """``clock`` charged for each job of ``tenants`` in turn (the jobs a dispatch really handed
    out, when some of those :func:`pick` chose were taken by a cancel meanwhile)."""
    out = Clock(clock.vtime, dict(clock.finish))
    for t in tenants:
        out.charge(t, weights.get(t, default_weight))
    return out


def exhausted(returned: Mapping[int, int], limit: int) -> bool:
    """Whether a tenant's waiting jobs were all seen: each priority level's query (at most
    ``limit`` rows) came back short."""
    return all(n < limit for n in returned.values())
