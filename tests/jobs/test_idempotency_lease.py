"""An in-flight Idempotency-Key claim is a lease renewed by the process holding it: a duplicate
gets 409 while the first request works, and the key is free again within ``LEASE`` once the
process that claimed it is gone (not after 15 minutes)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from core.db import utcnow
from core.errors import IdempotencyInFlight
from jobs import idempotency

pytestmark = pytest.mark.services


def test_a_crashed_claim_is_released_within_the_lease(svc, tenant):  # type: ignore[no-untyped-def]
    key, h, now = f"lease-{uuid.uuid4().hex}", "h" * 64, utcnow()
    assert idempotency.claim(svc.db, tenant, key, "POST /v1/jobs", h, 86400, now=now) is None
    with pytest.raises(IdempotencyInFlight):  # the first request is still working
        idempotency.claim(svc.db, tenant, key, "POST /v1/jobs", h, 86400, now=now + timedelta(seconds=5))
    # The holder renews its lease while it works: still in flight long after the first lease.
    assert idempotency._renewer.renew(now=now + timedelta(seconds=25)) >= 1
    with pytest.raises(IdempotencyInFlight):
        idempotency.claim(svc.db, tenant, key, "POST /v1/jobs", h, 86400, now=now + timedelta(seconds=45))
    # The process dies: nobody renews; one lease later a retry of the request takes the key over.
    idempotency._renewer.drop(svc.db, tenant, key)
    later = now + timedelta(seconds=25) + idempotency.LEASE + timedelta(seconds=1)
    assert idempotency.claim(svc.db, tenant, key, "POST /v1/jobs", h, 86400, now=later) is None
    idempotency.complete(svc.db, tenant, key, "job_x")
    assert idempotency.claim(svc.db, tenant, key, "POST /v1/jobs", h, 86400, now=later) == "job_x"
    assert not [k for _, _, k in idempotency._renewer.held() if k == key]
