"""The worker in the embedded local mode's setting: SQLite, kombu's filesystem broker, ``file://``
media and no Redis — the SSE stream then reads status and ``partial_text`` from the database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.worker.stack import Stack, build_local_stack, destroy_stack

pytestmark = [pytest.mark.slow]

KIT = Path(__file__).resolve().parents[1] / "data" / "conformance"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = build_local_stack(tmp_path_factory.mktemp("worker-local"))
    try:
        st.start_worker(queues="gpu,io", beat=True)
        yield st
    finally:
        destroy_stack(st)


def test_local_mode_job_equals_official_chat(stack: Stack) -> None:
    golden = json.loads((KIT / "goldens" / "internvl2-internlm2" / "numerics.json").read_text())
    e2 = next(e for e in golden["chat_end_to_end"] if e["id"] == "E2_chat_three_tiles_auto_prefix")
    url = stack.put_file(KIT / "images" / "img11_672x448.png")
    assert url.startswith("file://")
    job = stack.submit({"media": [{"type": "image", "url": url, "max_tiles": 2}], "prompts": [e2["question"]],
                        "generation": {"max_new_tokens": 16}})
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["output"]["text"] == e2["rounds"][0]["response"]


def test_sse_without_redis_polls_the_database(stack: Stack) -> None:
    job = stack.submit({"prompts": ["Hello, who are you?"], "generation": {"max_new_tokens": 1000}})
    events: list[tuple[str, Any]] = []
    with stack.client() as c, c.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=120) as r:
        assert r.status_code == 200
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event or "message", json.loads(line[6:])))
    kinds = [e for e, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "done", kinds
    assert ("status", {"id": job["id"], "status": "running"}) in events
    final = events[-1][1]
    assert final["status"] == "succeeded", (final, stack.logs())
    streamed = "".join(d["text"] for e, d in events if e == "token")
    assert streamed, kinds  # partial_text grew while the job ran (stored about twice a second)
    assert final["output"]["text"].startswith(streamed)


def test_prefer_wait_without_redis_polls_the_database(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/v1/jobs", json={"prompts": ["Hi"], "generation": {"max_new_tokens": 2}},
                   headers={"Prefer": "wait=60"})
    assert r.status_code == 202 and r.headers["preference-applied"] == "wait=60"
    assert r.json()["status"] == "succeeded", (r.json(), stack.logs())
