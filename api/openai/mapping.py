"""An OpenAI chat completion request → a captionq job request (before captionq's own checks).

- ``system`` / ``developer`` messages → ``generation.system_prompt`` (joined by newlines);
- the user message's ``text`` parts → the prompt (joined by newlines), its ``image_url`` parts →
  ``media`` images in order (``https://``, ``s3://``, ``data:``; ``detail: low`` → 1 tile,
  ``high``/``auto`` → captionq's default); ``video_url`` parts (an extension, as LMDeploy and
  vLLM spell it) → videos sampled as InternVL frames;
- ``max_tokens`` / ``max_completion_tokens`` → ``max_new_tokens``; ``temperature`` > 0 or
  ``top_p`` < 1 → sampling with them (absent: greedy, captionq's default), ``seed``, ``stop``,
  ``response_format`` passed through; ``n`` must be 1;
- earlier user/assistant turns → ``history`` as ``chat(history=...)`` holds it (see
  :func:`history_turns`).

Checks that captionq makes anyway (URLs, ranges, context) are left to
:func:`jobs.requests.normalize_job_request`; this module refuses what has no equivalent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from api.openai.errors import OpenAIError

# Parameters OpenAI clients may send that change nothing here (or only at their default value).
_IGNORED = {"user", "store", "service_tier", "parallel_tool_calls", "prediction", "modalities",
            "reasoning_effort", "web_search_options", "safety_identifier", "prompt_cache_key",
            "verbosity"}
_AT_DEFAULT: dict[str, Any] = {"frequency_penalty": 0, "presence_penalty": 0, "logit_bias": None,
                               "tools": None, "tool_choice": None, "functions": None,
                               "function_call": None, "audio": None}
_KNOWN = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
          "seed", "stop", "n", "stream", "stream_options", "response_format", "metadata", "logprobs",
          "top_logprobs", *_IGNORED, *_AT_DEFAULT}
IMAGE_PLACEHOLDER = "<image>"


@dataclass
class Mapped:
    model: str
    job: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


def _bad(message: str, param: str | None, code: str = "invalid_request") -> OpenAIError:
    return OpenAIError(message, param=param, code=code)


def _text(content: Any, param: str) -> str:
    """A system/assistant message's content: a string or text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") not in ("text", "refusal"):
                raise _bad("only text parts are allowed in this message", f"{param}.{i}")
            texts.append(str(part.get("text") or part.get("refusal") or ""))
        return "\n".join(texts)
    if content is None:
        return ""
    raise _bad("content must be a string or a list of parts", param)


def _media_part(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    kind = part.get("type")
    inner = part.get(kind) if isinstance(kind, str) else None
    if isinstance(inner, str):
        inner = {"url": inner}
    if not isinstance(inner, Mapping) or not isinstance(inner.get("url"), str):
        raise _bad(f"{kind} needs an object with a url", f"{param}.{kind}.url")
    if kind == "image_url":
        item: dict[str, Any] = {"type": "image", "url": inner["url"]}
        detail = inner.get("detail", "auto")
        if detail not in ("low", "high", "auto"):
            raise _bad("detail must be low, high or auto", f"{param}.image_url.detail")
        if detail == "low":
            item["max_tiles"] = 1
        if "max_tiles" in inner:  # extension: the exact tile budget
            item["max_tiles"] = inner["max_tiles"]
        return item
    item = {"type": "video", "url": inner["url"]}
    for key in ("num_frames", "start", "end", "max_tiles"):  # extension: InternVL frame sampling
        if key in inner:
            item[key] = inner[key]
    return item


def _user(content: Any, param: str) -> tuple[str, list[dict[str, Any]]]:
    """A user message: its text (parts joined by newlines) and its media in order."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list) or not content:
        raise _bad("content must be a string or a non-empty list of parts", param)
    texts: list[str] = []
    media: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise _bad("a content part must be an object", f"{param}.{i}")
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _bad("a text part needs text", f"{param}.{i}.text")
            texts.append(part["text"])
        elif kind in ("image_url", "video_url"):
            media.append(_media_part(part, f"{param}.{i}"))
        else:
            raise _bad(f"content part type {kind!r} is not supported (text, image_url, video_url)",
                       f"{param}.{i}.type")
    return "\n".join(texts), media


def media_question(text: str, media: list[dict[str, Any]]) -> str:
    """The question of a turn with media as the first round of ``chat()`` holds it in the history
    (after its automatic prefix): one image ``<image>\\n`` + text; several ``Image-1: <image>\\n``
    …; a video ``Frame1: <image>\\n`` … (the worker's first-round layout, written out)."""
    if not media or IMAGE_PLACEHOLDER in text:
        return text
    images = [m for m in media if m["type"] == "image"]
    if len(media) == 1 and images:
        return f"{IMAGE_PLACEHOLDER}\n{text}"
    parts, image_no, video_no, videos = [], 0, 0, len(media) - len(images)
    for m in media:
        if m["type"] == "image":
            image_no += 1
            parts.append(f"Image-{image_no}: {IMAGE_PLACEHOLDER}\n" if len(images) > 1 or videos
                         else f"{IMAGE_PLACEHOLDER}\n")
        else:
            video_no += 1
            frames = int(m.get("num_frames", 8))
            label = f"Video-{video_no}:\n" if videos > 1 else ""
            parts.append(label + "".join(f"Frame{j}: {IMAGE_PLACEHOLDER}\n" for j in range(1, frames + 1)))
    return "".join(parts) + text


def map_messages(messages: Any) -> tuple[str | None, list[tuple[str, str]], str, list[dict[str, Any]]]:
    """(system prompt, history [(question, answer)], final question, media of every turn)."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]], str | None]] = []  # (user text, media, answer)
    for i, msg in enumerate(messages):
        param = f"messages.{i}"
        if not isinstance(msg, Mapping):
            raise _bad("a message must be an object", param)
        role = msg.get("role")
        if role in ("system", "developer"):
            if turns:
                raise _bad("system messages must come before the conversation", f"{param}.role")
            system.append(_text(msg.get("content"), f"{param}.content"))
        elif role == "user":
            if turns and turns[-1][2] is None:
                raise _bad("two user messages in a row: join them into one", f"{param}.role")
            text, media = _user(msg.get("content"), f"{param}.content")
            turns.append((text, media, None))
        elif role == "assistant":
            if not turns or turns[-1][2] is not None:
                raise _bad("an assistant message must answer a user message", f"{param}.role")
            text, media, _ = turns[-1]
            turns[-1] = (text, media, _text(msg.get("content"), f"{param}.content"))
        else:
            raise _bad(f"role {role!r} is not supported (system, developer, user, assistant)",
                       f"{param}.role")
    if not turns or turns[-1][2] is not None:
        raise _bad("the last message must be a user message", "messages")
    media = [m for _, ms, _ in turns for m in ms]
    if len(turns) == 1:
        return ("\n".join(system) if system else None), [], turns[0][0], media
    history = [(media_question(t, ms), str(a)) for t, ms, a in turns[:-1]]
    last_text, last_media, _ = turns[-1]
    return ("\n".join(system) if system else None), history, media_question(last_text, last_media), media


def _generation(body: Mapping[str, Any]) -> dict[str, Any]:
    gen: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        gen["max_new_tokens"] = max_tokens
    temperature, top_p = body.get("temperature"), body.get("top_p")
    sampling = (isinstance(temperature, int | float) and temperature > 0) or \
        (isinstance(top_p, int | float) and top_p < 1)
    if sampling:
        gen["do_sample"] = True
        if temperature is not None:
            gen["temperature"] = temperature
        if top_p is not None:
            gen["top_p"] = top_p
    elif temperature is not None and not isinstance(temperature, int | float):
        gen["temperature"] = temperature  # captionq refuses the type with the field's name
    if body.get("seed") is not None:
        gen["seed"] = body["seed"]
    stop = body.get("stop")
    if stop is not None:
        gen["stop"] = [stop] if isinstance(stop, str) else stop
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, Mapping) and fmt.get("type") == "text"):
        gen["response_format"] = fmt  # {"type": "text"} is OpenAI's spelling of no format
    if body.get("logprobs"):
        gen["logprobs"] = True
        if body.get("top_logprobs"):
            gen["top_logprobs"] = body["top_logprobs"]
    return gen


def map_request(body: Any) -> Mapped:
    """The job request for a chat completion body; raises :class:`OpenAIError` for what captionq
    cannot express."""
    if not isinstance(body, Mapping):
        raise _bad("the request body must be a JSON object", None)
    for key in body:
        if key not in _KNOWN:
            raise _bad(f"unrecognized request argument supplied: {key}", key, "unknown_parameter")
    for key, default in _AT_DEFAULT.items():
        if body.get(key) not in (default, None, [], {}):
            raise _bad(f"{key} is not supported", key, "unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required", "model")
    if body.get("n") not in (None, 1):
        raise _bad("only n=1 is supported", "n", "unsupported_value")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping):
        raise _bad("stream_options must be an object", "stream_options")
    system, history, question, media = map_messages(body.get("messages"))
    if not question.strip():
        raise _bad("the last user message has no text", "messages")
    job: dict[str, Any] = {"media": media, "prompts": [question]}
    if history:
        job["history"] = [list(turn) for turn in history]
    gen = _generation(body)
    if system is not None:
        gen["system_prompt"] = system
    if gen:
        job["generation"] = gen
    meta = body.get("metadata")
    if meta:
        job["metadata"] = meta
    return Mapped(model, job, stream=stream, include_usage=bool(options.get("include_usage")))
