"""The one job state machine.

Every transition is named and lists the states it may start from. The service applies a
transition as one conditional ``UPDATE … WHERE id = ? AND status IN (from_states)``; zero rows
means the transition does not apply (already done, done by someone else, or out of order) and is a
no-op, so any message may be delivered twice and nothing happens twice.

    queued ──start──► running ──succeed──► succeeded
      │  ▲               │ │
      │  └───requeue─────┘ └──fail / cancel──► failed / canceled
      ├──cancel──► canceled
      ├──expire──► failed (code ``expired``)
      └──fail────► failed  (e.g. ``worker_lost`` when the attempt cap is reached at claim time)
    failed ──retry──► queued  (a batch's failed jobs, on POST /v1/batches/{id}/retry)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


@dataclass(frozen=True)
class Transition:
    name: str
    sources: frozenset[JobStatus]
    target: JobStatus

    def allowed_from(self, status: JobStatus | str) -> bool:
        return JobStatus(status) in self.sources


START = Transition("start", frozenset({JobStatus.QUEUED}), JobStatus.RUNNING)
# A redelivered message (its worker died) may take over a job left in ``running``.
RESTART = Transition("restart", frozenset({JobStatus.QUEUED, JobStatus.RUNNING}), JobStatus.RUNNING)
SUCCEED = Transition("succeed", frozenset({JobStatus.RUNNING}), JobStatus.SUCCEEDED)
FAIL = Transition("fail", frozenset({JobStatus.QUEUED, JobStatus.RUNNING}), JobStatus.FAILED)
CANCEL = Transition("cancel", frozenset({JobStatus.QUEUED, JobStatus.RUNNING}), JobStatus.CANCELED)
EXPIRE = Transition("expire", frozenset({JobStatus.QUEUED}), JobStatus.FAILED)
REQUEUE = Transition("requeue", frozenset({JobStatus.RUNNING}), JobStatus.QUEUED)
# POST /v1/batches/{id}/retry: a failed job of a batch runs again (jobs/batch_retry.py).
RETRY = Transition("retry", frozenset({JobStatus.FAILED}), JobStatus.QUEUED)

TRANSITIONS: dict[str, Transition] = {
    t.name: t for t in (START, RESTART, SUCCEED, FAIL, CANCEL, EXPIRE, REQUEUE, RETRY)
}


class BatchStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELED = "canceled"
    EXPIRED = "expired"  # its completion window ended first (jobs/batch_retry.py)


# Webhook event types.
JOB_EVENTS = ("job.running", "job.succeeded", "job.failed", "job.canceled")
BATCH_EVENTS = ("batch.completed",)
ALL_EVENTS = JOB_EVENTS + BATCH_EVENTS
DEFAULT_JOB_EVENTS = ("job.succeeded", "job.failed", "job.canceled")
DEFAULT_BATCH_EVENTS = ("batch.completed",)

EVENT_FOR_STATUS: dict[JobStatus, str] = {
    JobStatus.RUNNING: "job.running",
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
}

# Counter column on the batch row for each job status.
COUNTER_FOR_STATUS: dict[JobStatus, str] = {s: s.value for s in JobStatus}
