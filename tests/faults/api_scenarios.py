"""The fault suite's API scenarios: many clients at once, hostile requests (also while
PostgreSQL restarts), and tenant isolation on every route of the OpenAPI document.

They run against ``captionq serve`` as its own process (production settings: private addresses
refused) on the fault stack's private PostgreSQL and Redis, with no worker: jobs stay queued,
which is what a client sees under load. Scale: ``CAPTIONQ_FAULTS_SCALE=full`` → 50 clients for
60 s; small (the default test run) → 10 clients for 10 s.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from tests.faults.harness import FaultStack
from tests.faults.hostile import Hostile

FULL = os.environ.get("CAPTIONQ_FAULTS_SCALE", "small") == "full"
CLIENTS, SECONDS = (50, 60.0) if FULL else (10, 10.0)


@dataclass
class ApiFigures:
    scenario: str
    requests: int = 0
    server_errors: int = 0  # responses >= 500 that were not the documented 503 of an outage
    transport_errors: int = 0
    wrong: int = 0  # any other answer the scenario did not allow
    unavailable: int = 0  # 503 + Retry-After while a dependency was down
    rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""
    samples: list[str] = field(default_factory=list)
    kind: str = "api"

    def line(self) -> str:
        return json.dumps(asdict(self))

    def bad(self, sample: str) -> None:
        if len(self.samples) < 20:
            self.samples.append(sample[:400])


def is_problem(r: httpx.Response) -> bool:
    if not r.headers.get("content-type", "").startswith("application/problem+json"):
        return False
    try:
        body = r.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("status") == r.status_code and bool(body.get("code"))


def is_outage_answer(r: httpx.Response) -> bool:
    return r.status_code == 503 and is_problem(r) and r.headers.get("retry-after", "").isdigit()


# --- many clients at once ---------------------------------------------------------------------
QUICK = ("submit", "submit_idem", "get", "list", "cancel", "list_batches")


def load(base: str, api_key: str, image_url: str, clients: int = CLIENTS,
         seconds: float = SECONDS) -> ApiFigures:
    """``clients`` threads, each its own keep-alive connection, for ``seconds``: submit (half with
    an Idempotency-Key, some keys repeated: the replay must name the same job), get, list,
    cancel, long-poll (``wait=1``) and SSE (until the first event). Every answer is checked."""
    fig = ApiFigures(f"{clients} clients for {seconds:.0f} s")
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {}
    counts: Counter[str] = Counter()
    stop = time.monotonic() + seconds
    ops = ["submit", "submit_idem", "get", "list", "cancel", "wait", "sse", "list_batches"]
    weights = [20, 15, 25, 15, 8, 5, 7, 5]

    def client(i: int) -> None:
        rnd = random.Random(i)
        mine: list[str] = []
        keys: dict[str, str] = {}
        body = {"media": [{"type": "image", "url": image_url}], "prompts": ["Describe it."],
                "metadata": {"client": i}}
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=30) as c:
            while time.monotonic() < stop:
                op = rnd.choices(ops, weights)[0]
                if op in ("get", "cancel", "wait", "sse") and not mine:
                    op = "submit"
                t0 = time.perf_counter()
                problem = ""
                try:
                    if op in ("submit", "submit_idem"):
                        key = f"load-{i}-{rnd.randrange(30)}" if op == "submit_idem" else None
                        r = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": key} if key else {})
                        if r.status_code in (200, 201, 202):
                            jid = r.json()["id"]
                            if key and keys.setdefault(key, jid) != jid:
                                problem = f"replay of {key} named {jid}, first {keys[key]}"
                            mine.append(jid)
                        else:
                            problem = f"submit {r.status_code} {r.text[:200]}"
                    elif op == "get":
                        r = c.get(f"/v1/jobs/{rnd.choice(mine)}")
                        problem = "" if r.status_code == 200 else f"get {r.status_code}"
                    elif op == "list":
                        r = c.get("/v1/jobs", params={"limit": 20})
                        problem = "" if r.status_code == 200 else f"list {r.status_code}"
                    elif op == "list_batches":
                        r = c.get("/v1/batches", params={"limit": 20})
                        problem = "" if r.status_code == 200 else f"batches {r.status_code}"
                    elif op == "cancel":
                        r = c.post(f"/v1/jobs/{rnd.choice(mine)}/cancel")
                        problem = "" if r.status_code in (200, 202, 409) else f"cancel {r.status_code}"
                    elif op == "wait":
                        r = c.get(f"/v1/jobs/{rnd.choice(mine)}", params={"wait": 1})
                        problem = "" if r.status_code == 200 else f"wait {r.status_code}"
                    else:
                        with c.stream("GET", f"/v1/jobs/{rnd.choice(mine)}/events") as r:
                            if r.status_code == 200:
                                first = next((ln for ln in r.iter_lines() if ln.startswith("event:")), "")
                                problem = "" if first.startswith("event: status") else f"sse first {first!r}"
                            else:
                                problem = f"sse {r.status_code}"
                except httpx.TransportError as exc:
                    with lock:
                        fig.requests += 1
                        fig.transport_errors += 1
                        fig.bad(f"{op}: {type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    fig.requests += 1
                    counts[op] += 1
                    latencies.setdefault(op, []).append(elapsed)
                    if r.status_code >= 500:
                        fig.server_errors += 1
                    if problem:
                        fig.wrong += 1
                        fig.bad(f"{op}: {problem}")

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.monotonic() - started
    quick = sorted(x for op in QUICK for x in latencies.get(op, []))
    fig.rate = round(fig.requests / elapsed, 1)
    if len(quick) >= 2:
        fig.p50_ms = round(statistics.median(quick) * 1000, 1)
        fig.p99_ms = round(statistics.quantiles(quick, n=100)[98] * 1000, 1)
    fig.note = ", ".join(f"{op} {counts[op]}" for op in ops) + "; p50/p99 over submit, get, list and cancel"
    return fig


# --- hostile requests -------------------------------------------------------------------------
def send(base: str, keys: dict[str, str], h: Hostile) -> httpx.Response:
    auth = {"a": f"Bearer {keys['a']}", "b": f"Bearer {keys['b']}", "none": None}.get(h.auth, h.auth)
    headers: dict[str, Any] = {"authorization": auth} if auth else {}
    headers.update(h.headers)
    with httpx.Client(base_url=base, timeout=30) as c:
        if h.path.endswith("/events"):
            with c.stream(h.method, h.path, headers=headers, params=h.params, content=h.content) as r:
                r.read() if r.status_code != 200 else None
                return r
        return c.request(h.method, h.path, headers=headers, params=h.params, content=h.content)


def judge(h: Hostile, r: httpx.Response, *, outage: bool) -> str:
    """'' when the answer is right; else what is wrong with it."""
    if outage and is_outage_answer(r):
        return ""
    if not 400 <= r.status_code < 500:
        return f"{r.status_code}: {r.text[:200]}"
    if not is_problem(r):
        return f"{r.status_code} is not problem+json: {r.headers.get('content-type')} {r.text[:100]}"
    if h.status is not None and r.status_code != h.status:
        return f"{r.status_code} {r.json().get('code')}, expected {h.status}"
    if h.code is not None and r.json().get("code") != h.code:
        return f"code {r.json().get('code')}, expected {h.code}"
    return ""


def hostile(base: str, keys: dict[str, str], cases: list[Hostile], *,
            outage: Callable[[], None] | None = None, name: str = "") -> ApiFigures:
    """Every case once (``outage`` None), or every case over and over in 4 threads while
    ``outage()`` stops PostgreSQL and starts it again."""
    fig = ApiFigures(name or f"{len(cases)} malformed or hostile requests")
    lock = threading.Lock()

    def one(h: Hostile) -> None:
        try:
            r = send(base, keys, h)
        except httpx.TransportError as exc:
            with lock:
                fig.requests += 1
                fig.transport_errors += 1
                fig.bad(f"{h.name}: {type(exc).__name__}: {exc}")
            return
        verdict = judge(h, r, outage=outage is not None)
        with lock:
            fig.requests += 1
            fig.unavailable += is_outage_answer(r)
            fig.server_errors += r.status_code >= 500 and not is_outage_answer(r)
            if verdict:
                fig.wrong += 1
                fig.bad(f"{h.name}: {verdict}")

    if outage is None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, cases))
        return fig
    done = threading.Event()

    def loop(offset: int) -> None:
        i = offset
        while not done.is_set():
            one(cases[i % len(cases)])
            i += 4

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(loop, k) for k in range(4)]
        time.sleep(1.0)
        outage()
        time.sleep(2.0)
        done.set()
        for f in futures:
            f.result()
    return fig


# --- tenant isolation -------------------------------------------------------------------------
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
        by_param = {"job_id": queued, "batch_id": batch, "message_id": message, "custom_id": marker}
        zeros = "0" * 26
        unknown = {"job_id": f"job_{zeros}", "batch_id": f"bat_{zeros}", "message_id": f"msg_{zeros}",
                   "custom_id": "custom-id-nobody-has"}
        a_keys = {"/v1/jobs": marker, "/v1/batches": f"{marker}-b"}  # A's Idempotency-Keys
        bodies = {"/v1/jobs": {"media": job["media"]}, "/v1/batches": {"jobs": [{"media": job["media"]}]}}
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
                    if method == "post" and not path_names and r.status_code != 202:
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
