"""captionq jobs rendered as OpenAI ``chat.completion`` objects and ``chat.completion.chunk``s."""

from __future__ import annotations

import json
from typing import Any

# captionq's finish reasons → OpenAI's (a stop string or the end token are both ``stop``).
_FINISH = {"stop": "stop", "length": "length", "stop_string": "stop", "eos": "stop"}


def completion_id(job_id: str) -> str:
    """``chatcmpl-<job id>``: the job behind a completion is found from its id."""
    return f"chatcmpl-{job_id}"


def finish_reason(value: Any) -> str:
    return _FINISH.get(str(value), "stop")


def usage(job: dict[str, Any]) -> dict[str, int]:
    m = job.get("metrics") or {}
    prompt, output = int(m.get("input_tokens") or 0), int(m.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}


def _last_round(job: dict[str, Any]) -> dict[str, Any]:
    rounds = (job.get("output") or {}).get("rounds") or [{}]
    return rounds[-1]  # type: ignore[no-any-return]


def _created(job: dict[str, Any]) -> int:
    from datetime import datetime

    stamp = job.get("created_at")
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()) if stamp else 0


def completion(job: dict[str, Any], model: str) -> dict[str, Any]:
    last = _last_round(job)
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": (job.get("output") or {}).get("text", ""),
                    "refusal": None},
        "finish_reason": finish_reason(last.get("finish_reason")),
        "logprobs": _logprobs(last),
    }
    return {"id": completion_id(job["id"]), "object": "chat.completion", "created": _created(job),
            "model": model, "choices": [choice], "usage": usage(job), "system_fingerprint": None}


def _token_logprob(entry: dict[str, Any]) -> dict[str, Any]:
    token = str(entry.get("token", ""))
    return {"token": token, "logprob": entry.get("logprob"), "bytes": list(token.encode()),
            "top_logprobs": [{"token": str(t.get("token", "")), "logprob": t.get("logprob"),
                              "bytes": list(str(t.get("token", "")).encode())}
                             for t in entry.get("top_logprobs") or []]}


def _logprobs(last: dict[str, Any]) -> dict[str, Any] | None:
    """captionq's per-token ``{token, id, logprob, top_logprobs}`` in OpenAI's shape."""
    lp = last.get("logprobs")
    if not isinstance(lp, list):
        return None
    return {"content": [_token_logprob(e) for e in lp if isinstance(e, dict)], "refusal": None}


def chunk(job_id: str, model: str, created: int, delta: dict[str, Any],
          finish: str | None = None) -> dict[str, Any]:
    return {"id": completion_id(job_id), "object": "chat.completion.chunk", "created": created,
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def usage_chunk(job: dict[str, Any], model: str, created: int) -> dict[str, Any]:
    return {"id": completion_id(job["id"]), "object": "chat.completion.chunk", "created": created,
            "model": model, "system_fingerprint": None, "choices": [], "usage": usage(job)}


def sse_data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
