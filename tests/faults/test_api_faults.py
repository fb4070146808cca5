"""The fault suite's API scenarios (tests/faults/api_scenarios.py) against ``captionq serve`` on
a private PostgreSQL and Redis: many clients at once, hostile requests (also while PostgreSQL
restarts), tenant isolation on every route. No worker runs. Small by default (~30-40 s on 2
cores); ``bash scripts/faults.sh`` runs 50 clients for 60 s and writes the figures to
RELIABILITY.md.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api import helpers
from tests.api.test_bad_requests import corpus_context
from tests.faults import hostile as hostile_cases
from tests.faults.api_scenarios import ApiFigures, hostile, load
from tests.faults.harness import FaultStack
from tests.faults.isolation import isolation
from tests.faults.scenarios import record

pytestmark = pytest.mark.services


@dataclasses.dataclass
class Api:
    fs: FaultStack
    base: str
    keys: dict[str, str]
    document: dict[str, Any]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    fs = FaultStack(tmp_path_factory.mktemp("faults-api"), workers=False)
    try:
        # Production's URL policy (the suite's own stack allows its loopback webhook receiver) and
        # the request limits tests/api/test_bad_requests.py's corpus expects.
        strict = fs.settings.model_copy(update={
            "allow_private_urls": False, "max_request_bytes": 2 * 1024 * 1024,
            "max_data_uri_bytes": 64 * 1024, "max_context_tokens": 32768,
            "max_batch_jobs_inline": 500})
        stack = dataclasses.replace(fs.stack, settings=strict)
        b = helpers.new_tenant(fs.settings, "faults-b").api_key
        with stack.api_process() as base:
            document = httpx.get(base + "/openapi.json", timeout=30).json()
            yield Api(fs, base, {"a": fs.stack.api_key, "b": b}, document)
    finally:
        fs.close()


def check(fig: ApiFigures) -> None:
    record(fig)
    print(fig.line())
    assert fig.requests > 0, fig
    assert (fig.server_errors, fig.transport_errors, fig.wrong) == (0, 0, 0), fig.samples


def test_many_clients(api: Api) -> None:
    fig = load(api.base, api.keys["a"], api.fs.image)
    check(fig)
    assert fig.rate and fig.rate > 5, fig


def _cases(api: Api) -> list[hostile_cases.Hostile]:
    with helpers.client(api.base, api.keys["a"]) as c:
        ctx = corpus_context(c, api.fs.bucket)
    return hostile_cases.build(ctx, api.document, api.keys["a"])


def test_hostile_requests(api: Api) -> None:
    cases = _cases(api)
    assert len(cases) >= 60
    check(hostile(api.base, api.keys, cases))


def test_hostile_requests_while_postgres_restarts(api: Api) -> None:
    fs = api.fs

    def outage() -> None:
        fs.pg.stop("fast")
        try:
            time.sleep(3.0)
        finally:
            fs.pg.start()

    fig = hostile(api.base, api.keys, _cases(api), outage=outage,
                  name="malformed or hostile requests while PostgreSQL restarts (-m fast, down 3 s)")
    check(fig)
    assert fig.unavailable > 0, "no request saw the outage: the check could not fail"


def test_tenant_isolation_on_every_route(api: Api) -> None:
    fig = isolation(api.fs, api.base, api.keys, api.document)
    check(fig)
    assert len(api.document["paths"]) >= 12


def test_the_judge_can_fail() -> None:
    """The hostile scenario's verdicts, on answers it must refuse."""
    from tests.faults.api_scenarios import judge

    h = hostile_cases.Hostile("x", "GET", "/v1/jobs", status=422)
    problem = {"type": "t", "title": "t", "status": 422, "detail": "d", "code": "invalid_request"}
    ok = httpx.Response(422, json=problem, headers={"content-type": "application/problem+json"})
    assert judge(h, ok, outage=False) == ""
    assert judge(h, httpx.Response(500, json={**problem, "status": 500}), outage=False)
    assert judge(h, httpx.Response(422, text="no"), outage=False)  # not problem+json
    assert judge(h, httpx.Response(400, json={**problem, "status": 400},
                                   headers={"content-type": "application/problem+json"}), outage=False)
    down = httpx.Response(503, json={**problem, "status": 503, "code": "unavailable"},
                          headers={"content-type": "application/problem+json", "retry-after": "2"})
    assert judge(h, down, outage=True) == "" and judge(h, down, outage=False)
