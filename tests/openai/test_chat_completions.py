"""The OpenAI-compatible facade through the official ``openai`` client, against a real API and
worker on the tiny InternLM2 checkpoint: answers equal the same job through ``/v1/jobs`` and the
kit's ``chat()`` goldens (greedy, 16 new tokens)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.worker.stack import Stack

pytestmark = [pytest.mark.services]

MAX_TOKENS = 16


def _image_part(url: str, detail: str = "auto") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


def test_models_lists_the_served_checkpoint(client: Any) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["internvl2-internlm2"]
    assert client.models.retrieve("internvl2-internlm2").id == "internvl2-internlm2"


def test_image_completion_equals_the_same_job(client: Any, stack: Stack, image_url: str,
                                              golden: dict[str, Any]) -> None:
    question = "Please describe the image shortly."
    raw = client.chat.completions.with_raw_response.create(
        model="internvl2-internlm2", max_tokens=MAX_TOKENS, temperature=0,
        messages=[{"role": "user", "content": [_image_part(image_url),
                                                {"type": "text", "text": question}]}])
    answer = raw.parse()
    job = stack.submit({"media": [{"type": "image", "url": image_url}], "prompts": [question],
                        "generation": {"max_new_tokens": MAX_TOKENS}})
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded", stack.logs()
    assert answer.choices[0].message.content == done["output"]["text"]
    assert answer.choices[0].message.content == golden["E1_chat_one_tile_two_rounds"]["rounds"][0]["response"]
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == MAX_TOKENS
    assert answer.usage.prompt_tokens == done["metrics"]["input_tokens"]
    # The completion is a captionq job of the same tenant, in the job list.
    job_id = raw.headers["x-captionq-job-id"]
    assert answer.id == f"chatcmpl-{job_id}"
    facade_job = stack.get(job_id)
    assert facade_job["status"] == "succeeded" and facade_job["output"]["text"] == done["output"]["text"]


def test_client_completion_and_stream_give_the_same_text(client: Any, golden: dict[str, Any]) -> None:
    e3 = golden["E3_chat_text_only"]
    messages = [{"role": "user", "content": e3["question"]}]
    whole = client.chat.completions.create(model="internvl2-internlm2", messages=messages,
                                           max_tokens=MAX_TOKENS, temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == e3["rounds"][0]["response"]

    stream = client.chat.completions.create(model="internvl2-internlm2", messages=messages,
                                            max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content  # 16 tiny-model tokens may come as one flush of the worker's live text
    assert "".join(content) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS
    assert len({c.id for c in chunks}) == 1


def test_multi_turn_equals_the_two_round_chat_golden(client: Any, image_url: str,
                                                     golden: dict[str, Any]) -> None:
    """History given by the client: chat(history=[("<image>\\n" + q1, a1)]) for q2."""
    e1 = golden["E1_chat_one_tile_two_rounds"]
    first, second = e1["rounds"]
    messages = [
        {"role": "user", "content": [_image_part(image_url, "low"),
                                     {"type": "text", "text": "Please describe the image shortly."}]},
        {"role": "assistant", "content": first["response"]},
        {"role": "user", "content": second["question"]},
    ]
    answer = client.chat.completions.create(model="internvl2-internlm2", messages=messages,
                                            max_tokens=MAX_TOKENS, temperature=0, logprobs=True,
                                            top_logprobs=2)
    assert answer.choices[0].message.content == second["response"]
    tokens = answer.choices[0].logprobs.content
    assert len(tokens) == MAX_TOKENS and all(len(t.top_logprobs) == 2 for t in tokens)
    assert "".join(t.token for t in tokens) == second["response"]
    assert answer.usage.prompt_tokens == len(second["input_ids"][0])


def test_bad_requests_raise_the_clients_errors(client: Any, stack: Stack) -> None:
    import openai

    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="internvl2-internlm2", messages=messages, n=2)
    assert bad.value.body["param"] == "n" and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="internvl2-internlm2", messages=messages, max_tokens=0)
    assert bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="internvl2-internlm2", messages=[])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="internvl2-internlm2", messages=[
            {"role": "user", "content": [_image_part("ftp://example.com/a.png")]}])
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=messages)
    assert missing.value.body["code"] == "model_not_found"
    other = openai.OpenAI(base_url=str(client.base_url), api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        other.chat.completions.create(model="internvl2-internlm2", messages=messages)
    assert denied.value.body["code"] == "invalid_api_key"
    # captionq's own routes keep problem details
    with stack.client() as c:
        r = c.post("/v1/jobs", json={"prompts": []})
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.slow
def test_a_longer_stream_arrives_in_pieces(client: Any) -> None:
    messages = [{"role": "user", "content": "Tell me a story."}]
    stream = client.chat.completions.create(model="internvl2-internlm2", messages=messages,
                                            max_tokens=160, temperature=0, stream=True)
    content = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(content) > 1  # tokens arrived as they were generated, not as one piece
    whole = client.chat.completions.create(model="internvl2-internlm2", messages=messages,
                                           max_tokens=160, temperature=0)
    assert "".join(content) == whole.choices[0].message.content


def _job_after(stack: Stack, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        job = stack.get(job_id)
        if job["status"] in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_a_client_leaving_a_stream_cancels_the_job(client: Any, stack: Stack) -> None:
    messages = [{"role": "user", "content": "Tell me a very long story."}]
    with client.chat.completions.with_streaming_response.create(
            model="internvl2-internlm2", messages=messages, max_tokens=1200, temperature=0,
            stream=True) as response:
        job_id = response.headers["x-captionq-job-id"]
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # the first generated text: the job is running; leave
    job = _job_after(stack, job_id)
    assert job["status"] == "canceled", job


def test_a_client_leaving_a_completion_cancels_the_job(stack: Stack) -> None:
    import openai

    impatient = openai.OpenAI(base_url=f"{stack.server.base_url}/openai/v1", api_key=stack.api_key,
                              max_retries=0, timeout=1.0)
    with stack.client() as c:
        before = {j["id"] for j in c.get("/v1/jobs", params={"limit": 5}).json()["data"]}
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="internvl2-internlm2", max_tokens=1200, temperature=0,
                                          messages=[{"role": "user", "content": "Tell me a long story."}])
    with stack.client() as c:
        jobs = c.get("/v1/jobs", params={"limit": 1}).json()["data"]
    assert jobs[0]["id"] not in before  # the completion's own job
    job = _job_after(stack, jobs[0]["id"])
    assert job["status"] == "canceled", job


def test_response_format_and_system_message_reach_the_job(client: Any, stack: Stack) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="internvl2-internlm2", max_tokens=8, temperature=0,
        response_format={"type": "choice", "choices": ["cat", "dog"]},  # captionq's extension
        messages=[{"role": "system", "content": "Answer with one word."},
                  {"role": "user", "content": "Cat or dog?"}])
    answer = raw.parse()
    assert answer.choices[0].message.content in ("cat", "dog")
    request = stack.get(raw.headers["x-captionq-job-id"])["request"]
    assert request["generation"]["system_prompt"] == "Answer with one word."
    assert request["generation"]["max_new_tokens"] == 8 and request["generation"]["do_sample"] is False


def test_unsupported_endpoints_are_openai_not_found(client: Any) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="internvl2-internlm2", input="hi")
    assert missing.value.body["type"] == "invalid_request_error"


def test_job_history_is_checked_at_submission(stack: Stack) -> None:
    with stack.client() as c:
        bad_shape = c.post("/v1/jobs", json={"prompts": ["q"], "history": [["only a question"]]})
        grounding = c.post("/v1/jobs", json={"prompts": ["cat"], "task": "grounding",
                                              "history": [["q", "a"]],
                                              "media": [{"type": "image", "url": "s3://b/k.png"}]})
    assert bad_shape.status_code == 422 and bad_shape.json()["errors"][0]["loc"][:2] == ["history", 0]
    assert grounding.status_code == 422
    assert ["history"] in [e["loc"] for e in grounding.json()["errors"]]
