"""The publisher: Celery's wire format whichever path sends, priorities inverted for Redis, and
a dead broker fails fast instead of hanging."""

from __future__ import annotations

import base64
import json
import time

import pytest
import redis

from jobs.queue import Message, Publisher
from tests.api.helpers import drain, free_port

pytestmark = pytest.mark.services


def _raw(redis_url: str, key: str) -> list[dict]:  # type: ignore[type-arg]
    r = redis.Redis.from_url(redis_url)
    out = [json.loads(x) for x in r.lrange(key, 0, -1)]
    r.delete(key)
    return out


def test_bulk_messages_match_send_task(jobs_settings, redis_url):
    drain(jobs_settings)
    pub = Publisher.from_settings(jobs_settings)
    pub.send(Message("captionq.caption_job", ["job_single"], "gpu", "job_single", 9))
    single = _raw(redis_url, "gpu")
    pub.send_many([Message("captionq.caption_job", [f"job_{i}"], "gpu", f"job_{i}", 9) for i in range(20)])
    bulk = _raw(redis_url, "gpu")
    assert len(single) == 1 and len(bulk) == 20
    a, b = single[0], bulk[-1]
    per_message = {"id", "root_id", "argsrepr"}
    assert set(a["headers"]) == set(b["headers"])
    assert {k: v for k, v in a["headers"].items() if k not in per_message} == \
        {k: v for k, v in b["headers"].items() if k not in per_message}
    assert b["headers"]["id"] == b["headers"]["root_id"] == b["properties"]["correlation_id"]
    assert set(a["properties"]) == set(b["properties"])
    for k in ("delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert a["properties"][k] == b["properties"][k]
    assert {k: v for k, v in a.items() if k not in ("headers", "properties", "body")} == \
        {k: v for k, v in b.items() if k not in ("headers", "properties", "body")}
    args, kwargs, embed = json.loads(base64.b64decode(b["body"]))
    assert kwargs == {} and embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert args == [b["headers"]["id"]]
    pub.close()


def test_dead_broker_fails_fast(jobs_settings):
    dead = Publisher.from_settings(jobs_settings.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"}))
    for n in (1, 50):
        t0 = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017  (kombu's OperationalError)
            dead.send_many([Message("captionq.caption_job", [f"j{i}"], "gpu", f"j{i}", 0) for i in range(n)])
        assert time.monotonic() - t0 < 5
    with pytest.raises(Exception):  # noqa: B017
        dead.check(timeout=1)
