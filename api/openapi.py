"""The OpenAPI document: the routes' own parameters, plus what FastAPI cannot see by itself.

- Request bodies the routes parse themselves (to enforce size and nesting limits first): the
  pydantic schemas are added to ``components/schemas`` and referenced from each route.
- Every response: success bodies (:mod:`api.schemas`, NDJSON, SSE, Prometheus text) from
  :data:`SUCCESS`, and the problem+json errors each route can answer (:func:`error_statuses`)
  instead of FastAPI's default 422. tests/api/test_openapi.py checks real responses against it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api import schemas
from jobs.batch_retry import BatchRetryRequest
from jobs.batches import BatchRequest
from jobs.idempotency import MAX_KEY_LENGTH
from jobs.requests import JobRequest
from jobs.sources import SourceSpec

REF = "#/components/schemas/{model}"
MODELS: dict[str, type[BaseModel]] = {"JobRequest": JobRequest, "BatchRequest": BatchRequest,
                                      "BatchRetryRequest": BatchRetryRequest, "SourceSpec": SourceSpec,
                                      "KeyRequest": schemas.KeyRequest}
PROBLEM_JSON = "application/problem+json"


def body_schema(name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": REF.format(model=name)}}}}}


def optional_body(name: str) -> dict[str, Any]:
    return {"requestBody": {"required": False, "content": {
        "application/json": {"schema": {"$ref": REF.format(model=name)}}}}}


def _json(model: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


def _text(media_type: str, description: str, item: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if item:
        schema["description"] = f"One {item} JSON object per line"
    return {"description": description, "content": {media_type: {"schema": schema}}}


#: (method, path) -> {status: response object}
SUCCESS: dict[tuple[str, str], dict[int, dict[str, Any]]] = {
    ("post", "/v1/jobs"): {
        202: _json("Job", "The job, queued (with `Prefer: wait=N`: as it is when it ended or N s passed)"),
        200: _json("Job", "A replay: the job first created with this Idempotency-Key, as it is now "
                          "(header `Idempotent-Replayed: true`)"),
    },
    ("get", "/v1/jobs/{job_id}"): {200: _json("Job", "The job")},
    ("get", "/v1/jobs"): {200: _json("JobList", "A page of jobs, newest first")},
    ("post", "/v1/jobs/{job_id}/cancel"): {
        202: _json("Job", "Canceled (queued), or `cancel_requested` (running: the worker stops it)")},
    ("get", "/v1/jobs/{job_id}/events"): {200: _text(
        "text/event-stream", "Server-Sent Events `status` ({id, status}), `token` ({text, round}; a job "
        "with tasks adds `task`, the task's name) and `done` (the Job); the stream ends after `done`")},
    ("post", "/v1/batches"): {
        202: _json("Batch", "The batch, its jobs queued"),
        200: _json("Batch", "A replay: the batch first created with this Idempotency-Key"),
    },
    ("get", "/v1/batches/{batch_id}"): {200: _json("Batch", "The batch and its counts")},
    ("get", "/v1/batches"): {200: _json("BatchList", "A page of batches, newest first")},
    ("post", "/v1/batches/{batch_id}/cancel"): {
        202: _json("Batch", "Every unfinished job of the batch canceled or asked to stop")},
    ("post", "/v1/batches/{batch_id}/retry"): {
        202: _json("Batch", "The batch, its failed jobs (those with the given codes) queued again; "
                            "`retried` says how many")},
    ("get", "/v1/batches/{batch_id}/results"): {200: _text(
        "application/x-ndjson", "The results in submission order", item="BatchResultLine")},
    ("get", "/v1/webhook-deliveries"): {200: _json("WebhookMessageList", "Webhook messages, newest first")},
    ("post", "/v1/webhook-deliveries/{message_id}/redeliver"): {
        202: _json("WebhookMessage", "The message, pending, with its attempts so far")},
    ("get", "/v1/workers"): {200: _json("WorkerList", "Every GPU worker with a heartbeat row, and the "
                                                       "live ones' totals")},
    ("get", "/v1/models"): {200: _json("ModelList", "Every served model with its live workers, queue "
                                                     "and wait estimate")},
    ("get", "/v1/queues"): {200: _json("QueueList", "The gpu and io queues: depth and oldest waiting work")},
    ("get", "/v1/keys"): {200: _json("ApiKeyList", "The tenant's API keys, oldest first (no secrets)")},
    ("post", "/v1/keys"): {201: _json("CreatedApiKey", "The new key; `api_key` is shown this once")},
    ("post", "/v1/keys/{key_id}/revoke"): {200: _json("ApiKey", "The key, revoked (every API process "
                                                                  "refuses it within the auth cache TTL)")},
    ("get", "/v1/usage"): {200: _json("Usage", "Usage of the tenant's ended jobs, in total and by group")},
    ("get", "/healthz"): {200: _json("Health", "The process is alive")},
    ("get", "/readyz"): {200: _json("Readiness", "Ready: the database, the broker and a worker answer")},
    ("get", "/metrics"): {200: _text("text/plain", "Prometheus text format")},
}

ERROR_DESCRIPTIONS = {
    400: "The body is not valid JSON (`invalid_json`)",
    401: "Missing or invalid API key (`unauthorized`)",
    403: "The key lacks the scope the route needs (`insufficient_scope`); a submission past the "
         "plan's monthly quota (`quota_exceeded`)",
    404: "No such resource for this tenant, or an id that cannot exist (`not_found`)",
    409: "Conflict: `job_finished`, `batch_finished` or `idempotency_in_flight`",
    413: "The body is over the size limit (`payload_too_large`)",
    415: "The body is not `application/json` (`unsupported_content_type`)",
    422: "Invalid request; `errors` lists every invalid field (`invalid_request`, "
         "`unsupported_character`, `context_too_long`, `url_not_allowed`, `unknown_model`, "
         "`exceeds_model_limit`, `tasks_empty`, `too_many_tasks`, `tasks_conflict`, "
         "`duplicate_task_name`, `invalid_task`, `invalid_messages`, …)",
    429: "Rate limited (`rate_limited`: the tenant's or the key's requests per second), or the "
         "plan's jobs in flight (`too_many_jobs_in_flight`); see Retry-After",
    500: "An unexpected error (`internal`); the connection stays usable",
    503: "The database or the broker cannot be reached right now (`unavailable`); see Retry-After",
}


def error_statuses(method: str, path: str) -> list[int]:
    """The problem statuses a route can answer."""
    statuses = {422, 500}
    if path.startswith("/v1/"):
        statuses |= {401, 403, 503}
    if "{" in path or path == "/v1/webhook-deliveries":
        statuses.add(404)
    if method == "post" and path in ("/v1/jobs", "/v1/batches", "/v1/keys"):
        statuses |= {400, 413, 415}
    if method == "post" and path in ("/v1/jobs", "/v1/batches"):
        statuses.add(409)
    if path.endswith("/cancel"):
        statuses.add(409)
    if path.endswith("/retry"):
        statuses |= {400, 413, 415}
    if method == "post" and path.startswith("/v1/"):  # every POST spends a token
        statuses.add(429)
    if path in ("/readyz", "/metrics"):
        statuses.add(503)
    return sorted(statuses)


def _problem(status: int) -> dict[str, Any]:
    resp: dict[str, Any] = {"description": ERROR_DESCRIPTIONS[status],
                            "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="Problem")}}}}
    if status == 503:
        resp["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying",
                                           "schema": {"type": "integer"}}}
    if status == 401:
        resp["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    if status == 429:
        resp["headers"] = {
            "Retry-After": {"description": "Whole seconds until the request can succeed", "required": True,
                            "schema": {"type": "integer"}},
            "RateLimit": {"description": "IETF draft: the tightest bucket, `\"key\";r=<left>;t=<seconds>`",
                          "schema": {"type": "string"}},
            "RateLimit-Policy": {"description": "IETF draft: each bucket, `\"tenant\";q=<burst>;w=<seconds>`",
                                 "schema": {"type": "string"}}}
    return resp


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Same key and body within 24 h: the resource first created (200, "
                   "`Idempotent-Replayed: true`); another body: 422 `idempotency_key_reused`",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH,
               "pattern": "^[!-~]([ -~]*[!-~])?$"},
}


# Text the database can store (jobs.storable): no U+0000. Lone surrogates cannot be written in
# UTF-8 JSON without escapes, and JSON Schema patterns cannot name them portably.
STORABLE_TEXT = "^[^\\x00]*$"
_ID_BODY = "[0-7][0-9a-hjkmnp-tv-z]{25}"  # jobs.ids: 128 bits, lower-case Crockford base32
ID_PATTERNS = {"job_id": f"^job_{_ID_BODY}$", "batch_id": f"^bat_{_ID_BODY}$",
               "message_id": f"^msg_{_ID_BODY}$", "key_id": "^key_[0-9a-f]{16}$"}
REQUEST_COMPONENTS = ("JobRequest", "BatchRequest", "ImageItem", "VideoItem", "Generation", "Webhook",
                      "KeyRequest", "BatchRetryRequest", "SourceSpec")
# Written out two levels deep instead of recursively (schemathesis cannot generate invalid
# data for a recursive schema); deeper strings are refused all the same.
_SCALARS: list[dict[str, Any]] = [{"type": "string", "pattern": STORABLE_TEXT}, {"type": "number"},
                                  {"type": "boolean"}, {"type": "null"}]
_INNER = {"anyOf": [*_SCALARS, {"type": "array"},
                    {"type": "object", "propertyNames": {"pattern": STORABLE_TEXT}}]}
JSON_VALUE = {
    "description": "Any JSON value; no string in it (object keys included) holds U+0000",
    "anyOf": [*_SCALARS, {"type": "array", "items": _INNER},
              {"type": "object", "propertyNames": {"pattern": STORABLE_TEXT},
               "additionalProperties": _INNER}],
}


def _storable(node: Any) -> None:
    """Request schemas say what the API refuses: strings with U+0000 (422
    ``unsupported_character``), anywhere, free-form objects included."""
    if isinstance(node, list):
        for n in node:
            _storable(n)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "string" and not ({"pattern", "enum", "const"} & node.keys()):
        node["pattern"] = STORABLE_TEXT
    if node.get("type") == "object" and node.get("additionalProperties") is True:
        node["propertyNames"] = {"pattern": STORABLE_TEXT}
        node["additionalProperties"] = {"$ref": REF.format(model="JsonValue")}
    for key, value in node.items():
        if key not in ("pattern", "propertyNames"):
            _storable(value)


def _document_requests(schema: dict[str, Any]) -> None:
    comps = schema["components"]["schemas"]
    comps["JsonValue"] = JSON_VALUE
    for name in REQUEST_COMPONENTS:
        _storable(comps[name])
    comps["BatchRequest"]["description"] = (
        "Give exactly one of `jobs` (JobRequest objects), `manifest_url` (one JobRequest a line) and "
        "`source` (an S3 prefix or local folder with globs, WebDataset shards, a saved Hugging Face "
        "dataset or Parquet files: jobs built from its items, `defaults` merged under each). "
        "`output_formats` (jsonl, parquet, sidecar) are written under `output_url` in parts while "
        "the batch runs, then `manifest.json`; `completion_window` (seconds or '24h') ends the "
        "batch `expired` with partial results; `resume_from` skips the items (by custom_id) that "
        "succeeded in that batch.")
    comps["BatchRequest"]["properties"]["source"] = {
        "anyOf": [{"$ref": REF.format(model="SourceSpec")}, {"type": "null"}]}
    prompts = comps["JobRequest"]["properties"]["prompts"]["anyOf"][0]["items"]
    prompts["pattern"] = "^[^\\x00]*[^\\x00\\s][^\\x00]*$"  # not blank
    for item in schema.get("paths", {}).values():
        for op in item.values():
            for param in op.get("parameters", []):
                if param["in"] in ("query", "path") and param["name"] in ID_PATTERNS:
                    param["schema"] = {"type": "string", "pattern": ID_PATTERNS[param["name"]]}
                elif param["in"] in ("query", "path"):
                    _storable(param["schema"])


def _document_responses(schema: dict[str, Any]) -> None:
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            responses: dict[str, Any] = {}
            for status, resp in SUCCESS.get((method, path), {}).items():
                responses[str(status)] = resp
            if not responses:  # a route without an entry keeps FastAPI's success response
                responses = {k: v for k, v in op.get("responses", {}).items() if k.startswith(("2", "3"))}
            for status in error_statuses(method, path):
                responses[str(status)] = _problem(status)
            if (method, path) == ("get", "/readyz"):  # readiness answers its own body when not ready
                responses["503"]["description"] = "Not ready: which dependency is down"
                responses["503"]["content"]["application/json"] = {
                    "schema": {"$ref": REF.format(model="Readiness")}}
            op["responses"] = dict(sorted(responses.items()))
            if method == "post" and path in ("/v1/jobs", "/v1/batches"):
                op.setdefault("parameters", []).append(IDEMPOTENCY_KEY)


def install(app: FastAPI) -> None:
    def custom() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        comps.pop("HTTPValidationError", None)
        comps.pop("ValidationError", None)
        models: dict[str, type[BaseModel]] = {**MODELS, **{m.__name__: m for m in schemas.MODELS}}
        for name, model in models.items():
            s = model.model_json_schema(ref_template=REF)
            for def_name, d in s.pop("$defs", {}).items():
                comps.setdefault(def_name, d)
            comps[name] = s
        _document_responses(schema)
        _document_requests(schema)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key"}}
        for path, item in schema["paths"].items():
            if path.startswith("/v1/"):
                for op in item.values():
                    op["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = custom  # type: ignore[method-assign]
