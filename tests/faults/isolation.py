"""The fault suite's tenant-isolation scenario: tenant B on every operation of the OpenAPI
document, with tenant A's ids in every parameter that takes one (see RELIABILITY.md)."""

from __future__ import annotations

import random
import re
from typing import Any

import httpx

from tests.faults.api_scenarios import ApiFigures, is_problem
from tests.faults.harness import FaultStack


def isolation(fs: FaultStack, base: str, keys: dict[str, str], document: dict[str, Any]) -> ApiFigures:
    """Tenant B, on every operation of the OpenAPI document, with tenant A's ids in every path
    and query parameter that takes one: a 404 like an unknown id's for every A id in the path,
    and none of A's ids, custom_ids or metadata anywhere in any answer. Tenant A's same
    requests succeed (so the check can fail), and B's attempts changed nothing."""
    fig = ApiFigures("tenant isolation, every route")
    a = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {keys['a']}"}, timeout=30)
    b = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {keys['b']}"}, timeout=30)
    marker = f"secret-of-a-{random.randrange(10**9)}"
    job = {"media": [{"type": "image", "url": fs.image}], "custom_id": marker, "metadata": {"m": marker},
           "webhook": {"url": "https://hooks.example.com/a"}}
    with a, b:
        queued = a.post("/v1/jobs", json=job, headers={"Idempotency-Key": marker}).json()["id"]
        ended = a.post("/v1/jobs", json=job).json()["id"]
        a.post(f"/v1/jobs/{ended}/cancel")
        batch = a.post("/v1/batches", json={"jobs": [{**job, "custom_id": f"{marker}-b"}]},
                       headers={"Idempotency-Key": f"{marker}-b"}).json()["id"]
        before = a.get("/v1/webhook-deliveries", params={"job_id": ended}).json()["data"][0]
        message = before["id"]
        secrets = [queued, ended, batch, message, marker]
        a_key = "key_" + keys["a"].split("_")[2]  # cq_key_<hex>_<secret>: revoked by B, it must live on
        by_param = {"job_id": queued, "batch_id": batch, "message_id": message, "custom_id": marker,
                    "key_id": a_key}
        zeros = "0" * 26
        unknown = {"job_id": f"job_{zeros}", "batch_id": f"bat_{zeros}", "message_id": f"msg_{zeros}",
                   "custom_id": "custom-id-nobody-has", "key_id": "key_" + "0" * 16}
        a_keys = {"/v1/jobs": marker, "/v1/batches": f"{marker}-b"}  # A's Idempotency-Keys
        bodies = {"/v1/jobs": {"media": job["media"]}, "/v1/batches": {"jobs": [{"media": job["media"]}]},
                  "/v1/keys": {"scopes": ["read"]}}
        for path, item in document["paths"].items():
            for method, op in item.items():
                params = op.get("parameters", [])
                path_names = [p["name"] for p in params if p["in"] == "path"]
                query = {p["name"]: by_param[p["name"]] for p in params
                         if p["in"] == "query" and p["name"] in by_param}
                for name in path_names:
                    if name not in by_param:
                        fig.wrong += 1
                        fig.bad(f"{method} {path}: path parameter {name} is not known to this check")
                concrete = re.sub(r"\{(\w+)\}", lambda m: by_param.get(m[1], m[0]), path)
                variants = [query] if query else [{}]
                if len(query) > 1:  # each filter on its own too (the deliveries list takes one)
                    variants += [{k: v} for k, v in query.items()]
                for q in variants:
                    fig.requests += 2
                    r = _call(b, method, concrete, q, bodies.get(path), a_keys.get(path))
                    # the same request with ids nobody has: B's answer must be the same, but for
                    # the id B itself sent, which a 404's detail may repeat
                    fake = re.sub(r"\{(\w+)\}", lambda m: unknown.get(m[1], m[0]), path)
                    fake_q = {k: unknown[k] for k in q}
                    ref = _call(b, method, fake, q and fake_q, bodies.get(path), a_keys.get(path))
                    sent = [by_param[n] for n in path_names] + list(q.values())
                    seen = r.text
                    for name, value in by_param.items():
                        if value in sent:
                            seen = seen.replace(value, unknown[name])
                    leaked = [x for x in secrets if x in seen]
                    # /readyz answers its documented 503 here: no GPU worker runs in this stack
                    if leaked or (r.status_code >= 500 and path != "/readyz"):
                        fig.wrong += 1
                        fig.bad(f"B {method.upper()} {concrete} {q}: {r.status_code} shows {leaked}")
                    if method == "post" and path in a_keys and r.status_code != 202:
                        fig.wrong += 1  # A's Idempotency-Key must make B's own job or batch
                        fig.bad(f"B POST {path}, A's Idempotency-Key: {r.status_code} {r.text[:200]}")
                    if path_names or q:
                        same = r.status_code == ref.status_code and seen == ref.text
                        if not same or (path_names and (r.status_code, _code(r)) != (404, "not_found")):
                            fig.wrong += 1
                            fig.bad(f"B {method.upper()} {concrete} {q}: {r.status_code} {_code(r)} "
                                    f"{seen[:150]}, "
                                    f"unknown id: {ref.status_code} {_code(ref)} {ref.text[:150]}")
                    if path_names and method == "get":  # the control: A reads the same thing
                        fig.requests += 1
                        ra = _call(a, method, concrete, q, None, None)
                        if ra.status_code != 200 or not any(x in ra.text for x in secrets):
                            fig.wrong += 1
                            fig.bad(f"A {method.upper()} {concrete}: {ra.status_code}, control failed")
        # B's cancel and redeliver changed nothing of A's
        still = a.get(f"/v1/jobs/{queued}").json()["status"]
        after = a.get("/v1/webhook-deliveries", params={"job_id": ended}).json()["data"][0]
        if still != "queued":
            fig.wrong += 1
            fig.bad(f"A's job is {still} after B's cancel")
        if after != before:
            fig.wrong += 1
            fig.bad(f"A's message changed by B's redeliver: {before} → {after}")
        if a.get("/v1/jobs").status_code != 200:  # B's revoke of A's key id changed nothing
            fig.wrong += 1
            fig.bad("A's key stopped working after B's revoke")
        lists = [a.get("/v1/jobs", params={"custom_id": marker}), a.get("/v1/batches")]
        if not all(marker in x.text or batch in x.text for x in lists):
            fig.wrong += 1
            fig.bad("A's own lists do not show A's objects: the control failed")
    fig.note = f"{len(document['paths'])} paths from /openapi.json"
    return fig


def _code(r: httpx.Response) -> str | None:
    return r.json().get("code") if is_problem(r) else None


def _call(c: httpx.Client, method: str, path: str, query: dict[str, str], body: Any,
          idem: str | None) -> httpx.Response:
    headers = {"Idempotency-Key": idem} if (body is not None and idem) else {}
    if path.endswith("/events"):
        with c.stream(method.upper(), path, params=query, timeout=10) as r:
            if r.status_code == 200:  # read only the first event: the stream lasts until the job ends
                first = next((ln for ln in r.iter_lines() if ln.startswith("data:")), "")
                r._content = first.encode()  # what the test inspects for leaks
            else:
                r.read()
            return r
    return c.request(method.upper(), path, params=query, json=body, headers=headers)
