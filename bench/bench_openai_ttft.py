"""Streaming overhead of the OpenAI-compatible facade: time to the first token through
``POST /openai/v1/chat/completions`` (``stream: true``) next to the time to the first ``token``
event of the same job through captionq's own API (``POST /v1/jobs``, then
``GET /v1/jobs/{id}/events``).

    python bench/bench_openai_ttft.py [--n 100] [--max-tokens 8] [--api process|thread]

The stack is the one of ``bench/bench_worker_overhead.py``: a redis-server of the benchmark's
own, PostgreSQL, S3, ``captionq serve`` in its own process and one ``captionq worker --queues
gpu,io`` process on the tiny InternLM2 checkpoint, running its real forward pass on CPU (the
instant model of the overhead benchmark answers no tokens, and a first token is what is timed
here). Both sides use raw ``httpx`` streaming on one kept-alive client, so neither pays for a
client library the other does not use:

- **facade**: from sending the POST to the first ``chat.completion.chunk`` whose
  ``delta.content`` is non-empty (the role-only chunk sent first does not count);
- **SSE**: from sending ``POST /v1/jobs`` to the first ``token`` event with non-empty text on
  the job's event stream, the stream opened as soon as the POST answers (as a client does).

The job body of the SSE side is the one the facade builds from the chat body
(``api.openai.mapping.map_request``), so both run the same prompt, the same greedy decoding
and the same token budget. The two take turns (alternating which goes first) so that drift in
the machine's load hits both alike; the first 5 of each are warm-up. Target: facade p50 <=
SSE p50 + 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_worker_overhead import api_client, pct, summary  # noqa: E402

MODEL = "internvl2-internlm2"
WARMUP = 5


def chat_body(max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Describe a red bicycle."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True}


def facade_first_token(c: Any, body: dict[str, Any]) -> tuple[float, str]:
    """Seconds from sending the streaming completion to its first chunk with content; reads the
    stream to ``[DONE]`` so that the job has ended before the next turn starts."""
    t0 = time.perf_counter()
    first: float | None = None
    job_id = ""
    with c.stream("POST", "/openai/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        job_id = r.headers["x-captionq-job-id"]
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError(f"job {job_id}: the stream carried no content")
    return first, job_id


def sse_first_token(c: Any, job_body: dict[str, Any]) -> tuple[float, str]:
    """Seconds from sending ``POST /v1/jobs`` to the first ``token`` event with text on its event
    stream; reads on to ``done``."""
    t0 = time.perf_counter()
    r = c.post("/v1/jobs", json=job_body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    first: float | None = None
    with c.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as s:
        event = None
        for line in s.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "token" and first is None and json.loads(line[6:]).get("text"):
                    first = time.perf_counter() - t0
                elif event == "done":
                    assert json.loads(line[6:])["status"] == "succeeded", line
                    break
    if first is None:
        raise RuntimeError(f"job {job_id}: no token event carried text")
    return first, job_id


def run(n: int, max_tokens: int, api: str) -> tuple[list[float], list[float]]:
    from api.openai.mapping import map_request
    from tests.worker.stack import build_stack, destroy_stack, private_redis

    body = chat_body(max_tokens)
    job_body = map_request(body).job
    facade: list[float] = []
    sse: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp)) as url:
        stack = build_stack(Path(tmp), redis_url=url)
        try:
            stack.start_worker(queues="gpu,io")
            with api_client(stack, api) as c:
                for i in range(n + WARMUP):
                    turn = ["facade", "sse"] if i % 2 == 0 else ["sse", "facade"]
                    for side in turn:
                        if side == "facade":
                            dt, _ = facade_first_token(c, body)
                        else:
                            dt, _ = sse_first_token(c, job_body)
                        if i >= WARMUP:
                            (facade if side == "facade" else sse).append(dt)
        finally:
            destroy_stack(stack)
    return facade, sse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="measured requests per side (after 5 warm-up)")
    ap.add_argument("--max-tokens", type=int, default=8, help="token budget of each completion")
    ap.add_argument("--api", choices=["process", "thread"], default="process",
                    help="process (default): `captionq serve` in its own process, as deployed; thread: "
                         "uvicorn in a thread of the benchmark process (shares the client's GIL)")
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; tiny checkpoint, "
          f"max_tokens {a.max_tokens}; API in a {a.api}; raw httpx on both sides", flush=True)
    facade, sse = run(a.n, a.max_tokens, a.api)
    print(summary("facade: POST -> first content chunk", facade))
    print(summary("SSE: POST /v1/jobs -> first token", sse))
    f50, s50 = statistics.median(facade), statistics.median(sse)
    diffs = sorted(f - s for f, s in zip(facade, sse, strict=True))
    p99_gap = pct(facade, 99) - pct(sse, 99)
    print(f"facade - SSE: p50 {1000 * (f50 - s50):+.1f} ms (p99 {1000 * p99_gap:+.1f} ms; "
          f"median of paired differences {1000 * statistics.median(diffs):+.1f} ms)")
    print(f"target (facade p50 <= SSE p50 + 5 ms = {1000 * (s50 + 0.005):.1f} ms): "
          f"{'met' if f50 <= s50 + 0.005 else 'NOT met'}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
