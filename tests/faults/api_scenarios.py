"""The fault suite's API scenarios: many clients at once, and hostile requests (also while
PostgreSQL restarts); tenant isolation on every route is in tests/faults/isolation.py.

They run against ``captionq serve`` as its own process (production settings: private addresses
refused) on the fault stack's private PostgreSQL and Redis, with no worker: jobs stay queued,
which is what a client sees under load. Scale: ``CAPTIONQ_FAULTS_SCALE=full`` → 50 clients for
60 s; small (the default test run) → 10 clients for 10 s.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

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

    def transport_error(self, what: str, exc: Exception) -> None:
        """A request that got no answer at all (the caller holds the figures' lock)."""
        self.requests += 1
        self.transport_errors += 1
        self.bad(f"{what}: {type(exc).__name__}: {exc}")


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
                        fig.transport_error(op, exc)
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
                fig.transport_error(h.name, exc)
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
