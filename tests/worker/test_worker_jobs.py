"""End to end through a real worker process: jobs submitted to the real API, run by
``captionq worker --queues gpu,io`` on the tiny InternLM2 checkpoint (CPU), media in S3.

The DONE criterion: with greedy decoding and ``max_new_tokens`` 16 the job answers equal what the
official ``chat()`` / ``batch_chat()`` returned on the same checkpoint
(``goldens/internvl2-internlm2/numerics.json``, ``chat_end_to_end`` E1–E4).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.worker.stack import Stack, build_stack, destroy_stack

pytestmark = [pytest.mark.services, pytest.mark.slow]

KIT = Path(__file__).resolve().parents[1] / "data" / "conformance"
GREEDY16 = {"max_new_tokens": 16, "do_sample": False}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = build_stack(tmp_path_factory.mktemp("worker-jobs"))
    try:
        st.start_worker(queues="gpu,io")
        yield st
    finally:
        destroy_stack(st)


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    data = json.loads((KIT / "goldens" / "internvl2-internlm2" / "numerics.json").read_text())
    return {e["id"]: e for e in data["chat_end_to_end"]}


@pytest.fixture(scope="module")
def urls(stack: Stack) -> dict[str, str]:
    out = {p.stem: stack.put_file(p) for p in (KIT / "images").iterdir()}
    out.update({p.stem: stack.put_file(p) for p in (KIT / "video").glob("*.mp4")})
    return out


def image(url: str, max_tiles: int = 12) -> dict[str, Any]:
    return {"type": "image", "url": url, "max_tiles": max_tiles}


def succeeded(stack: Stack, job: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    done = stack.wait(job["id"], timeout)
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["attempts"] == 1
    return done


# --- the DONE criterion: official chat() answers ---------------------------------------------
def test_e1_one_tile_two_rounds_equals_official_chat(stack: Stack, urls: dict[str, str],
                                                     golden: dict[str, Any]) -> None:
    e1 = golden["E1_chat_one_tile_two_rounds"]
    # The recorded first question is "<image>\n…": chat()'s automatic prefix gives the same
    # query from the plain prompt, which is what an API user sends.
    assert e1["question"] == "<image>\nPlease describe the image shortly."
    prompts = ["Please describe the image shortly.", e1["rounds"][1]["question"]]
    job = stack.submit({"media": [image(urls["img04_448x448"])], "prompts": prompts, "generation": GREEDY16})
    done = succeeded(stack, job)
    out = done["output"]
    assert [r["text"] for r in out["rounds"]] == [r["response"] for r in e1["rounds"]]
    assert [r["prompt"] for r in out["rounds"]] == prompts
    assert out["text"] == e1["rounds"][1]["response"]
    m = done["metrics"]
    assert m["tiles"] == 1 and m["frames"] == 0 and m["output_tokens"] == 32
    assert m["input_tokens"] == sum(len(r["input_ids"][0]) for r in e1["rounds"])
    assert m["model"] == "internvl2-internlm2"
    assert m["queued_seconds"] >= 0 and m["run_seconds"] > 0


def test_e1_explicit_placeholder_gives_the_same_answer(stack: Stack, urls: dict[str, str],
                                                       golden: dict[str, Any]) -> None:
    e1 = golden["E1_chat_one_tile_two_rounds"]
    job = stack.submit({"media": [image(urls["img04_448x448"])], "prompts": [e1["question"]],
                        "generation": GREEDY16})
    assert succeeded(stack, job)["output"]["text"] == e1["rounds"][0]["response"]


def test_e2_three_tiles_equals_official_chat(stack: Stack, urls: dict[str, str],
                                             golden: dict[str, Any]) -> None:
    e2 = golden["E2_chat_three_tiles_auto_prefix"]
    job = stack.submit({"media": [image(urls["img11_672x448"], max_tiles=2)], "prompts": [e2["question"]],
                        "generation": GREEDY16})
    done = succeeded(stack, job)
    assert done["output"]["text"] == e2["rounds"][0]["response"]
    assert done["metrics"]["tiles"] == 3
    assert done["metrics"]["input_tokens"] == len(e2["rounds"][0]["input_ids"][0])


def test_e3_text_only_equals_official_chat(stack: Stack, golden: dict[str, Any]) -> None:
    e3 = golden["E3_chat_text_only"]
    job = stack.submit({"prompts": [e3["question"]], "generation": GREEDY16})
    done = succeeded(stack, job)
    assert done["output"]["text"] == e3["rounds"][0]["response"]
    assert done["metrics"]["tiles"] == 0


def test_the_worker_reports_its_engine_in_get_workers(stack: Stack, golden: dict[str, Any]) -> None:
    """The heartbeat carries the engine's counters (GET /v1/workers); the startup line names the
    slots and KV budget it reports."""
    e3 = golden["E3_chat_text_only"]
    succeeded(stack, stack.submit({"prompts": [e3["question"]], "generation": GREEDY16}))
    s = stack.settings
    slots = s.batch_max_requests if s.batching else 1
    deadline = time.monotonic() + 4 * s.heartbeat_seconds + 5
    with stack.client() as c:
        while True:  # the next beat after the job carries its tokens
            mine = [w for w in c.get("/v1/workers").json()["data"] if w["status"] == "live"
                    and (w["engine"] or {}).get("tokens_generated", 0) >= 16]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert mine, stack.logs()
    w = mine[0]
    # continuous batching: each slot holds its share of the budget (at most the model's context)
    assert w["slots"] == slots and 0 < w["kv_budget_tokens"] <= s.batch_max_tokens
    assert w["kv_budget_tokens"] % slots == 0
    assert w["engine"]["decode_steps"] >= 15 and w["engine"]["requests"] >= 1  # token 1: the prefill
    assert f"continuous batching, {slots} decode slots, KV budget {w['kv_budget_tokens']} tokens" in \
        stack.workers[0].text()


def test_prefer_wait_answers_with_the_finished_job(stack: Stack, golden: dict[str, Any]) -> None:
    e3 = golden["E3_chat_text_only"]
    with stack.client() as c:
        r = c.post("/v1/jobs", json={"prompts": [e3["question"]], "generation": GREEDY16},
                   headers={"Prefer": "wait=60"})
        assert r.status_code == 202 and r.headers["preference-applied"] == "wait=60"
        done = r.json()
        assert done["status"] == "succeeded", (done, stack.logs())
        assert done["output"]["text"] == e3["rounds"][0]["response"]
        assert c.get(f"/v1/jobs/{done['id']}").json() == done  # the committed job, as stored


def test_e4_batch_equals_official_batch_chat(stack: Stack, urls: dict[str, str],
                                             golden: dict[str, Any]) -> None:
    """The two rows of batch_chat() as two jobs of one batch (run together by the batcher when
    they arrive together); results.jsonl is written to the batch's output_url."""
    e4 = golden["E4_batch_chat"]
    prefix = f"s3://{stack.bucket.bucket}/results/e4/"
    body = {
        "jobs": [
            {"media": [image(urls["img04_448x448"])], "prompts": [e4["questions"][0]], "custom_id": "row-0"},
            {"media": [image(urls["img11_672x448"], max_tiles=2)], "prompts": [e4["questions"][1]],
             "custom_id": "row-1"},
        ],
        "defaults": {"generation": GREEDY16},
        "output_url": prefix,
    }
    with stack.client() as c:
        r = c.post("/v1/batches", json=body)
        assert r.status_code == 202, r.text
        batch = stack.wait_batch(r.json()["id"])
        assert batch["status"] == "completed", batch
        lines = [json.loads(x) for x in c.get(f"/v1/batches/{batch['id']}/results").text.splitlines()]
    assert [ln["custom_id"] for ln in lines] == ["row-0", "row-1"]
    assert [ln["output"]["text"] for ln in lines] == e4["responses"]
    obj = stack.bucket.client().get_object(Bucket=stack.bucket.bucket, Key="results/e4/results.jsonl")
    written = [json.loads(x) for x in obj["Body"].read().decode().splitlines()]
    assert [(w["job_id"], w["status"], w["output"]["text"]) for w in written] == \
        [(ln["job_id"], ln["status"], ln["output"]["text"]) for ln in lines]


# --- other inputs -------------------------------------------------------------------------------
def test_several_images_separate_and_combined(stack: Stack, urls: dict[str, str]) -> None:
    media = [image(urls["img04_448x448"], 2), image(urls["img12_300x200"], 2)]  # 1 + 1 tiles
    prompt = "Describe the two images in detail."
    sep = stack.submit({"media": media, "prompts": [prompt], "image_mode": "separate",
                        "generation": GREEDY16})
    comb = stack.submit({"media": media, "prompts": [prompt], "image_mode": "combined",
                         "generation": GREEDY16})
    sep, comb = succeeded(stack, sep), succeeded(stack, comb)
    assert sep["metrics"]["tiles"] == comb["metrics"]["tiles"] == 2
    # separate: "Image-1: <img>…</img>\nImage-2: <img>…</img>\n" + prompt (two image blocks, two
    # labels of 9 characters, one byte-token each with the toy tokenizer); combined: "<img>…</img>\n".
    assert sep["metrics"]["input_tokens"] - comb["metrics"]["input_tokens"] == 9 + 9 + 1 + 2


def test_video_frames(stack: Stack, urls: dict[str, str]) -> None:
    # The tiny checkpoint's context is 1280 tokens: at 256 tokens a frame, 3 frames fit.
    whole = stack.submit({"media": [{"type": "video", "url": urls["vid01_320x240_25fps_75f"],
                                     "num_frames": 3}],
                          "prompts": ["What happens in the video?"], "generation": GREEDY16})
    window = stack.submit({"media": [{"type": "video", "url": urls["vid02_200x360_29.97fps_100f"],
                                      "num_frames": 2, "start": 0.5, "end": 2.0}],
                           "prompts": ["What happens?"], "generation": GREEDY16})
    whole, window = succeeded(stack, whole), succeeded(stack, window)
    assert (whole["metrics"]["frames"], whole["metrics"]["tiles"]) == (3, 3)
    assert (window["metrics"]["frames"], window["metrics"]["tiles"]) == (2, 2)
    # "Frame1: <image>\n…Frame3: <image>\n" + prompt: 3 blocks of 256 + 2, labels of 8 bytes, "\n".
    text_only = succeeded(stack, stack.submit({"prompts": ["What happens in the video?"],
                                               "generation": GREEDY16}))
    assert whole["metrics"]["input_tokens"] - text_only["metrics"]["input_tokens"] == 3 * (258 + 8 + 1)


def test_grounding_outputs_boxes_per_phrase(stack: Stack, urls: dict[str, str]) -> None:
    job = stack.submit({"media": [image(urls["img03_640x480"], 2)], "task": "grounding",
                        "prompts": ["the red disc", "the blue band"], "generation": GREEDY16})
    out = succeeded(stack, job)["output"]
    assert [r["prompt"] for r in out["rounds"]] == ["the red disc", "the blue band"]
    assert isinstance(out["boxes"], list)  # random weights: whatever boxes the text holds
    for b in out["boxes"]:
        assert b["media_index"] == 0 and len(b["box"]) == 4


# --- failures -----------------------------------------------------------------------------------
def failed_with(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    done = stack.wait(stack.submit(body)["id"])
    assert done["status"] == "failed", done
    return done["error"]  # type: ignore[no-any-return]


def test_missing_object_fails_media_not_found(stack: Stack) -> None:
    err = failed_with(stack, {"media": [image(f"s3://{stack.bucket.bucket}/no/such.png")]})
    assert err["code"] == "media_not_found" and err["retryable"] is False


def test_corrupt_image_fails_media_unreadable(stack: Stack, urls: dict[str, str]) -> None:
    png = (KIT / "images" / "img04_448x448.png").read_bytes()
    url = stack.put("broken.png", png[:200])  # a PNG signature, then the data stops
    assert failed_with(stack, {"media": [image(url)]})["code"] == "media_unreadable"


def test_non_media_bytes_fail_unsupported_media(stack: Stack) -> None:
    url = stack.put("notes.png", b"these are not the pixels you are looking for\n" * 10)
    assert failed_with(stack, {"media": [image(url)]})["code"] == "unsupported_media"


def test_prompt_over_the_dynamic_ntk_context_runs(stack: Stack, urls: dict[str, str]) -> None:
    # 10 tiles = 2560 image tokens; the tiny InternLM2's max_position_embeddings is 1280, but its
    # dynamic-NTK rope extends past it (as the official code does), so the job runs, alone in its
    # batch; only CAPTIONQ_MAX_CONTEXT_TOKENS caps it (models/engine.py, token budget rule)
    job = stack.submit({"media": [image(urls["img10_1000x1000"], 12)], "generation": GREEDY16})
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["metrics"]["input_tokens"] > 2560


# --- live: cancel, partial_text, SSE --------------------------------------------------------------
LONG = {"max_new_tokens": 1000, "do_sample": False}  # ~200 prompt tokens + 1000 < 1280


def test_cancel_while_running(stack: Stack) -> None:
    job = stack.submit({"prompts": ["Hello, who are you?"], "generation": LONG})
    seen = stack.wait_for(job["id"], lambda j: j["status"] == "running" and j["partial_text"])
    assert seen["status"] == "running", seen  # partial_text appears while it runs
    with stack.client() as c:
        r = c.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202, r.text
    done = stack.wait(job["id"])
    assert done["status"] == "canceled", done
    assert done["output"] is None and done["partial_text"] is None
    # The API announced it on Redis and the worker stopped at once, not at its next poll.
    assert f"job {job['id']}: cancel announced" in stack.logs(tail=200_000)


def sse_events(stack: Stack, job_id: str, out: list[tuple[str, Any]]) -> None:
    with stack.client() as c, c.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event or "message", json.loads(line[6:])))


def test_sse_streams_status_tokens_and_done(stack: Stack) -> None:
    job = stack.submit({"prompts": ["Tell me a story.", "And another one."],
                        "generation": {"max_new_tokens": 120, "do_sample": False}})
    events: list[tuple[str, Any]] = []
    t = threading.Thread(target=sse_events, args=(stack, job["id"], events))
    t.start()
    t.join(150)
    assert not t.is_alive()
    kinds = [e for e, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "done" and kinds.count("done") == 1
    final = events[-1][1]
    assert final["id"] == job["id"] and final["status"] == "succeeded"
    assert final == stack.get(job["id"])  # the worker's done event carries the committed job
    tokens = [d for e, d in events if e == "token"]
    assert tokens, kinds
    by_round: dict[int, str] = {}
    for d in tokens:
        by_round[d["round"]] = by_round.get(d["round"], "") + d["text"]
    rounds = final["output"]["rounds"]
    # Every round that streamed is exactly its final answer (the stream may open mid-round 0).
    for r, text in by_round.items():
        assert rounds[r]["text"].endswith(text) and (r == min(by_round) or rounds[r]["text"] == text)
    assert max(by_round) == len(rounds) - 1


def test_sse_other_tenant_gets_404(stack: Stack) -> None:
    from tests.api import helpers

    other = helpers.new_tenant(stack.settings, f"other-{time.monotonic_ns()}")
    job = stack.submit({"prompts": ["Hi"], "generation": GREEDY16})
    with httpx.Client(base_url=stack.server.base_url,
                      headers={"Authorization": f"Bearer {other.api_key}"}) as c:
        assert c.get(f"/v1/jobs/{job['id']}/events").status_code == 404
    stack.wait(job["id"])


def test_duplicate_message_for_a_finished_job_changes_nothing(stack: Stack) -> None:
    from jobs.outbox import caption_message
    from jobs.queue import Publisher

    done = succeeded(stack, stack.submit({"prompts": ["Hi"], "generation": GREEDY16}))
    publisher = Publisher.from_settings(stack.settings)
    try:
        publisher.send(caption_message(done["id"], 0))  # the sweeper or the broker may do this
    finally:
        publisher.close()
    mark = f"caption_job[{done['id']}] succeeded in"
    deadline = time.monotonic() + 20
    while stack.logs(10**7).count(mark) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.logs(10**7).count(mark) == 2  # both deliveries ran …
    # the second delivery's line: "… succeeded in 0.005s: 'skipped'", then the job's bound ids
    assert stack.logs(10**7).rsplit(mark, 1)[1].split("\n", 1)[0].split(" [job_id=")[0].endswith("'skipped'")
    assert stack.get(done["id"]) == done  # … and the second one changed nothing


# --- transient media errors: retried inside the attempt, then by a Celery retry --------------------
class FlakyServer:
    """An http server on loopback that answers 503 to the first ``failures`` requests."""

    def __init__(self, body: bytes, failures: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if outer.requests <= failures:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/img.png"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_transient_fetch_errors_are_retried_then_succeed(stack: Stack, golden: dict[str, Any]) -> None:
    # 4 = the first attempt's download and its 3 quick retries (storage's own backoff): the
    # attempt gives up with a transient error, Celery delivers the job again after a backoff.
    srv = FlakyServer((KIT / "images" / "img04_448x448.png").read_bytes(), failures=4)
    try:
        job = stack.submit({"media": [image(srv.url)], "prompts": ["Please describe the image shortly."],
                            "generation": GREEDY16})
        done = stack.wait(job["id"], timeout=90)
    finally:
        srv.close()
    assert done["status"] == "succeeded", (done, stack.logs())
    assert done["attempts"] == 2 and srv.requests == 5
    assert done["output"]["text"] == golden["E1_chat_one_tile_two_rounds"]["rounds"][0]["response"]


def test_transient_fetch_errors_fail_after_the_last_attempt(stack: Stack) -> None:
    srv = FlakyServer(b"", failures=10**6)
    try:
        job = stack.submit({"media": [image(srv.url)], "generation": GREEDY16})
        done = stack.wait(job["id"], timeout=120)
    finally:
        srv.close()
    assert done["status"] == "failed", (done, stack.logs())
    assert done["attempts"] == stack.settings.max_attempts == 3
    assert done["error"]["code"] == "transient" and done["error"]["retryable"] is True
