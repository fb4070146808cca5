"""OpenAI's Batch API through the official client: upload a JSONL file, create a batch, poll it
to ``completed``, download the output file and match its lines by ``custom_id``."""

from __future__ import annotations

import io
import json
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.worker.stack import Stack

pytestmark = [pytest.mark.services]


def _line(custom_id: str, content: Any, max_tokens: int = 16) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "internvl2-internlm2", "max_tokens": max_tokens, "temperature": 0,
                     "messages": [{"role": "user", "content": content}]}}


def test_batch_round_trip(client: Any, stack: Stack, image_url: str, golden: dict[str, Any]) -> None:
    e1, e3 = golden["E1_chat_one_tile_two_rounds"], golden["E3_chat_text_only"]
    lines = [
        _line("text", e3["question"]),
        _line("image", [{"type": "image_url", "image_url": {"url": image_url}},
                        {"type": "text", "text": "Please describe the image shortly."}]),
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    assert uploaded.bytes == len(data) and uploaded.purpose == "batch"
    assert client.files.content(uploaded.id).content == data
    stored = urlsplit(stack.settings.openai_files_url or "")  # streamed to the shared bucket
    key = f"{stored.path.lstrip('/')}{stack.tenant_id}/{uploaded.id}.jsonl"
    assert stack.bucket is not None
    assert stack.bucket.client().get_object(Bucket=stored.netloc, Key=key)["Body"].read() == data

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"run": "nightly"})
    assert batch.status == "in_progress" and batch.request_counts.total == 2
    assert batch.metadata == {"run": "nightly"}
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "cancelled", "failed") and time.monotonic() < deadline:
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", stack.logs()
    assert batch.request_counts.completed == 2 and batch.request_counts.failed == 0
    assert batch.error_file_id is None and batch.output_file_id is not None
    assert batch.id in [b.id for b in client.batches.list().data]

    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    by_id = {x["custom_id"]: x for x in out}
    assert set(by_id) == {"text", "image"}
    text = by_id["text"]["response"]["body"]["choices"][0]["message"]["content"]
    image = by_id["image"]["response"]["body"]["choices"][0]["message"]["content"]
    assert text == e3["rounds"][0]["response"]
    assert image == e1["rounds"][0]["response"]
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in out)
    assert all(x["response"]["body"]["usage"]["completion_tokens"] == 16 for x in out)
    # Underneath: a captionq batch whose jobs carry the custom_ids.
    with stack.client() as c:
        jobs = c.get("/v1/jobs", params={"batch_id": batch.id}).json()["data"]
    assert sorted(j["custom_id"] for j in jobs) == ["image", "text"]


def test_bad_batch_requests(client: Any) -> None:
    import openai

    bad = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}\n'
    uploaded = client.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert "line 1" in err.value.message
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                              completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("bat_doesnotexist")


def test_batch_cancel(client: Any, stack: Stack) -> None:
    # A grammar of 1,100 letters: the random-weight model cannot end the answer early.
    line = _line("long-0", "Tell me a very long story.", max_tokens=1200)
    line["body"]["response_format"] = {"type": "regex", "pattern": "a{1100}"}
    lines = [line]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("long.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    # Cancel once the job runs: a running job stops at its next generation step.
    deadline = time.monotonic() + 60
    with stack.client() as c:
        while time.monotonic() < deadline:
            jobs = c.get("/v1/jobs", params={"batch_id": batch.id}).json()["data"]
            if any(j["status"] == "running" for j in jobs):
                break
            time.sleep(0.1)
    batch = client.batches.cancel(batch.id)
    assert batch.status in ("cancelling", "cancelled")
    deadline = time.monotonic() + 60
    while batch.status != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "cancelled", stack.logs()
    assert batch.request_counts.failed == 1 and batch.output_file_id is None
    errors = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["long-0"]
    assert all(e["response"] is None and e["error"]["code"] for e in errors)
