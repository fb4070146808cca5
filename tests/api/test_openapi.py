"""The OpenAPI document is the contract: real responses are checked against it.

- a bounded schemathesis run against the live server (every operation, generated valid and
  invalid requests): no 5xx, every status, content type, header and body as documented;
- targeted checks: real Job, Batch, list and webhook bodies against their component schemas,
  errors documented as problem+json, /docs and /redoc served without a CDN.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks

from tests.api.helpers import problem_of

pytestmark = pytest.mark.services

IMAGE = {"type": "image", "url": "s3://bucket-a/photo.jpg"}


@pytest.fixture(scope="module")
def document(server) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    import httpx

    resp = httpx.get(server.base_url + "/openapi.json", timeout=30)
    assert resp.status_code == 200
    return resp.json()  # type: ignore[no-any-return]


def check(document: dict[str, Any], body: Any, component: str) -> None:
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


# --- schemathesis -----------------------------------------------------------------------------
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]


def checks_for(path: str) -> list[Any]:
    """/readyz answers its documented 503 while no GPU worker is live, and none runs here."""
    return [c for c in CHECKS if c is not checks.not_a_server_error] if path == "/readyz" else CHECKS


EXAMPLES = 30  # per operation and mode (15 operations, 2 modes): ~30 s on 2 idle cores


def test_every_operation_answers_as_documented(server, tenant_a) -> None:  # type: ignore[no-untyped-def]
    """Generated requests, valid and invalid, for every operation in the document."""
    api_schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
    headers = {"Authorization": f"Bearer {tenant_a.api_key}"}
    failures: list[str] = []
    generator_gave_up: list[str] = []
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def run(case: Any) -> None:
                case.call_and_validate(headers=headers, checks=checks_for(case.operation.path), timeout=30)

            try:
                run()
            except Unsatisfiable:  # no parameter and no body: nothing to make invalid
                assert mode == schemathesis.GenerationMode.NEGATIVE
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup among them
                kind = f"{type(exc).__module__}.{type(exc).__name__}"
                if mode == schemathesis.GenerationMode.NEGATIVE and "Cannot generate" in str(exc):
                    # The invalid-data generator (hypothesis-jsonschema) gives up on some array
                    # shapes; that says nothing of the API. Counted, and bounded below.
                    generator_gave_up.append(operation.label)
                    continue
                failures.append(f"{operation.label} ({mode.value}): {kind}: {exc}"[:3000])
    assert not failures, "\n\n".join(failures)
    assert len(generator_gave_up) <= 2, generator_gave_up


# --- targeted ---------------------------------------------------------------------------------
def test_no_default_validation_error_and_problems_everywhere(document) -> None:  # type: ignore[no-untyped-def]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, op in item.items():
            success = [s for s in op["responses"] if s.startswith("2")]
            assert success, (method, path)
            for status in success:
                content = op["responses"][status]["content"]
                assert all(c.get("schema") for c in content.values()), (method, path, status)
            for status, resp in op["responses"].items():
                if int(status) >= 400:
                    assert "application/problem+json" in resp["content"], (method, path, status)
            assert "422" in op["responses"]


def test_real_bodies_match_their_schemas(api, document) -> None:  # type: ignore[no-untyped-def]
    job = api.post("/v1/jobs", json={"media": [IMAGE], "metadata": {"k": "v"},
                                     "webhook": {"url": "https://hooks.example.com/x"}}).json()
    check(document, job, "Job")
    check(document, api.get(f"/v1/jobs/{job['id']}").json(), "Job")
    check(document, api.get("/v1/jobs", params={"limit": 2}).json(), "JobList")
    canceled = api.post(f"/v1/jobs/{job['id']}/cancel").json()
    check(document, canceled, "Job")
    assert canceled["status"] == "canceled"
    deliveries = api.get("/v1/webhook-deliveries", params={"job_id": job["id"]}).json()
    check(document, deliveries, "WebhookMessageList")
    assert deliveries["data"], "a job.canceled message was written"
    again = api.post(f"/v1/webhook-deliveries/{deliveries['data'][0]['id']}/redeliver")
    assert again.status_code == 202
    check(document, again.json(), "WebhookMessage")
    batch = api.post("/v1/batches", json={"jobs": [{"media": [IMAGE], "custom_id": "a"}]}).json()
    check(document, batch, "Batch")
    check(document, api.get("/v1/batches", params={"limit": 2}).json(), "BatchList")
    check(document, api.post(f"/v1/batches/{batch['id']}/cancel").json(), "Batch")
    lines = api.get(f"/v1/batches/{batch['id']}/results")
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    for line in lines.text.splitlines():
        check(document, __import__("json").loads(line), "BatchResultLine")
    problem = problem_of(api.post("/v1/jobs", json={"media": "nope"}))
    check(document, problem, "Problem")


def test_a_check_that_can_fail(document) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(jsonschema.ValidationError):
        check(document, {"id": "job_x", "object": "job"}, "Job")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_their_assets_locally(server, page) -> None:  # type: ignore[no-untyped-def]
    import httpx

    html = httpx.get(server.base_url + page, timeout=30)
    assert html.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert sources and all(s.startswith("/") for s in sources), sources  # nothing from a CDN
    for src in sources:
        if src.endswith((".js", ".css")):
            asset = httpx.get(server.base_url + src, timeout=30)
            assert asset.status_code == 200 and len(asset.content) > 10_000, src
