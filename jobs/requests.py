"""The job request: schema (API.md's JobRequest), validation and normalisation.

:func:`normalize_job_request` turns a parsed JSON object into the stored, normalised request
(every default filled in, URLs in their normalised spelling) or raises
:class:`core.errors.InvalidRequest` listing every bad field as ``{loc, msg, code}``.

Two layers: the pydantic schema (strict types, ranges, unknown fields refused), then checks that
need configuration: URLs (through an injected :class:`UrlChecker`, which the API builds on
``storage.urls``), metadata size, and a LOWER bound on the prompt's tokens against the model's
context (``context_too_long``; the worker does the exact check after tokenising):

    lower bound = 256 x (number of images + total video frames)     (>= 1 tile of 256 tokens each)
                + the prompts' tokens                               (counted by the checkpoint's
                                                                     tokenizer when the API has it,
                                                                     else ceil(characters / 128):
                                                                     no token is longer than that)
                + generation.max_new_tokens

Unknown context (``RequestLimits.max_context_tokens`` None): no check here.

``model`` names a served model (``RequestLimits.models``, built from the registry,
``core/registry.py``); absent, the default. Anything else is ``unknown_model``. The model's own
limits apply: its context, and its ``max_tiles`` / ``max_new_tokens`` (a request that asks for
more is refused with ``exceeds_model_limit``; one that leaves them out gets the smaller default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

import pydantic_core
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from core.errors import InvalidRequest
from jobs import formats, storable
from jobs.states import ALL_EVENTS, DEFAULT_JOB_EVENTS, JOB_EVENTS

MAX_MEDIA_ITEMS = 64
MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 100_000
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 32
TOKENS_PER_TILE = 256
MAX_CHARS_PER_TOKEN = 128
# A prompt counted alone may merge into its neighbours in the chat template by a token each side.
BOUNDARY_TOKENS = 2
MAX_TTL_SECONDS = 30 * 86400

_STRICT = ConfigDict(extra="forbid", strict=True)



def _integral(value: Any) -> Any:
    """JSON has one number type: 8.0 (or 8e0) is the integer 8, as JSON Schema says; 8.5 stays a
    float and is refused. Strings stay strings (refused: the types are strict)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS)]
EventType = Literal["job.running", "job.succeeded", "job.failed", "job.canceled", "batch.completed"]


ByteRange = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]


class ImageItem(BaseModel):
    model_config = _STRICT
    type: Literal["image"]
    url: str
    max_tiles: JsonInt = Field(12, ge=1, le=40)
    # [offset, length]: only these bytes of the object are the media (a WebDataset tar member)
    byte_range: ByteRange | None = None


class VideoItem(BaseModel):
    model_config = _STRICT
    type: Literal["video"]
    url: str
    num_frames: JsonInt = Field(8, ge=1, le=64)
    start: float | None = Field(None, ge=0)
    end: float | None = Field(None, gt=0)
    max_tiles: JsonInt = Field(1, ge=1, le=40)
    byte_range: ByteRange | None = None

    @model_validator(mode="after")
    def _window(self) -> VideoItem:
        if self.end is not None and self.end <= (self.start or 0.0):
            raise ValueError("end must be greater than start")
        return self


MediaItem = Annotated[ImageItem | VideoItem, Field(discriminator="type")]


class Generation(BaseModel):
    model_config = _STRICT
    max_new_tokens: JsonInt = Field(512, ge=1, le=16384)
    do_sample: bool = False
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: JsonInt = Field(50, ge=0, le=1000)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    seed: JsonInt | None = Field(None, ge=0, le=2**63 - 1)
    # structured output (jobs.formats): checked by formats.check_generation
    response_format: dict[str, Any] | None = None
    stop: list[Annotated[str, StringConstraints(min_length=1, max_length=formats.MAX_STOP_CHARS)]] | None = \
        Field(None, max_length=formats.MAX_STOP_STRINGS)
    system_prompt: Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)] | None = None
    logprobs: bool = False
    top_logprobs: JsonInt = Field(0, ge=0, le=formats.MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _sampling(self) -> Generation:
        if self.do_sample and self.temperature == 0:
            raise ValueError("temperature must be > 0 when do_sample is true")
        return self


class Webhook(BaseModel):
    model_config = _STRICT
    url: str
    events: list[EventType] | None = Field(None, min_length=1, max_length=len(ALL_EVENTS))


class Message(BaseModel):
    model_config = _STRICT
    role: Literal["user", "assistant"]
    content: Prompt


class TaskSpec(BaseModel):
    """One of a job's tasks (:mod:`jobs.tasks`): an independent conversation over the job's media,
    given as rounds (``prompts``, or grounding phrases) or as ``messages`` ending with the user's
    question. ``generation`` overrides the job's field by field."""

    model_config = _STRICT
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    task: Literal["chat", "grounding"] = "chat"
    prompts: list[Prompt] | None = Field(None, min_length=1, max_length=MAX_PROMPTS)
    messages: list[Message] | None = Field(None, min_length=1, max_length=2 * MAX_PROMPTS + 1)
    generation: dict[str, Any] | None = None


class JobRequest(BaseModel):
    """API.md's JobRequest. Unknown fields and wrong JSON types are refused (422)."""

    model_config = _STRICT
    media: list[MediaItem] = Field(default_factory=list, max_length=MAX_MEDIA_ITEMS)
    image_mode: Literal["separate", "combined"] = "separate"
    prompts: list[Prompt] | None = Field(None, min_length=1, max_length=MAX_PROMPTS)
    task: Literal["chat", "grounding"] = "chat"
    # Earlier turns [(question, answer)] exactly as chat(history=...) takes them (questions with
    # their <image> placeholders written out); the first prompt is then asked as is.
    history: list[Annotated[list[Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)]],
                            Field(min_length=2, max_length=2)]] | None = Field(None, max_length=MAX_PROMPTS)
    generation: Generation = Field(default_factory=lambda: Generation.model_validate({}))
    webhook: Webhook | None = None
    custom_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    metadata: dict[str, Any] | None = None
    priority: JsonInt = Field(0, ge=0, le=9)
    ttl_seconds: JsonInt | None = Field(None, ge=1, le=MAX_TTL_SECONDS)
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    # Several independent tasks over the same media (jobs.tasks), instead of prompts/history/task;
    # the count is checked before the schema (too_many_tasks, tasks_empty)
    tasks: list[TaskSpec] | None = None


JOB_FIELDS = frozenset(JobRequest.model_fields)


class UrlChecker(Protocol):
    """Judges URLs at submission; returns the normalised URL or raises an error that carries a
    ``code`` (``url_not_allowed``, ``unsupported_media``, ``media_too_large``) and a message."""

    def media(self, url: str, kind: str) -> str: ...

    def webhook(self, url: str) -> str: ...

    def manifest(self, url: str) -> str: ...

    def output(self, url: str) -> str: ...


@dataclass(frozen=True)
class ModelLimits:
    """One served model as submissions are judged against it: its registry name, context (None:
    unknown) and token counter, and its caps on tiles per item and new tokens (None: the
    schema's)."""

    name: str
    max_context_tokens: int | None = None
    count_tokens: Callable[[str], int] | None = None
    max_tiles: int | None = None
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class RequestLimits:
    default_ttl_seconds: int = 86400
    # The model's context in tokens (None: unknown, the worker checks) and, when the API can
    # read the checkpoint's tokenizer, a prompt's token count (lower bound: see the module doc).
    # With ``models``, each model's own apply instead.
    max_context_tokens: int | None = None
    count_tokens: Callable[[str], int] | None = None
    # The served models by name (and by checkpoint, as OpenAI clients name them), and the name
    # a request without ``model`` gets. Empty: ``model`` is not judged here.
    models: Mapping[str, ModelLimits] = field(default_factory=dict)
    default_model: str | None = None

    def served(self) -> list[str]:
        return sorted({m.name for m in self.models.values()})


def default_prompt(media: list[dict[str, Any]]) -> str:
    images = sum(1 for m in media if m["type"] == "image")
    videos = len(media) - images
    if videos == 0:
        return "Describe the image in detail." if images <= 1 else "Describe the images in detail."
    if images == 0:
        return "Describe the video in detail." if videos == 1 else "Describe the videos in detail."
    return "Describe the images and videos in detail."


def error(loc: list[Any], msg: str, code: str = "invalid_request") -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "code": code}


def pydantic_errors(exc: ValidationError, prefix: list[Any]) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors(include_url=False):
        loc = list(e["loc"])
        # A discriminated union puts its tag in the path (media.0.image.url); clients want
        # media.0.url.
        if len(loc) >= 3 and loc[0] == "media" and loc[2] in ("image", "video"):
            del loc[2]
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}"
        out.append(error(prefix + loc, msg))
    return out


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping early once over ``limit``."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            depth = max(depth, d)
            if depth > limit:
                return depth
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return depth


def _check_metadata(meta: Any, loc: list[Any]) -> list[dict[str, Any]]:
    if meta is None:
        return []
    size = len(pydantic_core.to_json(meta))
    if size > MAX_METADATA_BYTES:
        return [error(loc, f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}",
                      "metadata_too_large")]
    if json_depth(meta, MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH:
        return [error(loc, f"metadata nests deeper than {MAX_METADATA_DEPTH} levels", "metadata_too_large")]
    return []


def _url_error(exc: Exception, loc: list[Any]) -> dict[str, Any]:
    code = getattr(exc, "code", None)
    if not isinstance(code, str):
        raise exc
    return error(loc, str(getattr(exc, "message", exc)), code if code != "internal" else "invalid_request")


def prompt_token_lower_bound(req: dict[str, Any], count_tokens: Callable[[str], int] | None = None) -> int:
    visual = sum(1 if m["type"] == "image" else m["num_frames"] for m in req["media"])
    if count_tokens is not None:
        text = sum(max(0, count_tokens(p) - BOUNDARY_TOKENS) for p in req["prompts"])
    else:
        text = math.ceil(sum(len(p) for p in req["prompts"]) / MAX_CHARS_PER_TOKEN)
    return TOKENS_PER_TILE * visual + text


def normalize_job_request(
    raw: Any, checker: UrlChecker, limits: RequestLimits, *, loc: list[Any] | None = None,
    allow_batch_events: bool = False,
) -> dict[str, Any]:
    """Validate ``raw`` (parsed JSON) and return the normalised request dict.

    Raises :class:`InvalidRequest` whose ``errors`` list every problem with its location
    (prefixed by ``loc``, e.g. ``["manifest", 17]``).
    """
    prefix = list(loc or [])
    if not isinstance(raw, Mapping):
        raise InvalidRequest("a job request must be a JSON object",
                             errors=[error(prefix, "expected an object")])
    storable.check(raw, prefix)
    from jobs import tasks as job_tasks  # it builds on this module's schema

    early = job_tasks.check_shape(raw, prefix)
    if early:
        raise InvalidRequest(_summary(early), errors=early)
    try:
        parsed = JobRequest.model_validate(raw)
    except ValidationError as exc:
        schema_errs = pydantic_errors(exc, prefix)
        raise InvalidRequest(_summary(schema_errs), errors=schema_errs) from None
    req = parsed.model_dump()
    errs: list[dict[str, Any]] = []
    context, count_tokens = limits.max_context_tokens, limits.count_tokens
    if limits.models:
        served = limits.models.get(req["model"] or limits.default_model or "")
        if served is None:
            errs.append(error([*prefix, "model"], f"unknown model {req['model']!r}: this service serves "
                              f"{', '.join(limits.served())}", "unknown_model"))
        else:
            req["model"] = served.name
            context, count_tokens = served.max_context_tokens, served.count_tokens
            errs += _model_limits(parsed, req, served, prefix)
    if not limits.models:
        del req["model"]  # no registry to judge it by: not stored (stored requests stay as they were)
    for i, item in enumerate(req["media"]):
        try:
            item["url"] = checker.media(item["url"], item["type"])
        except Exception as exc:
            errs.append(_url_error(exc, [*prefix, "media", i, "url"]))
        if item["byte_range"] is None:
            del item["byte_range"]  # requests without one are stored as before
        elif item["byte_range"][1] == 0 or item["url"].split(":", 1)[0] not in ("s3", "file"):
            errs.append(error([*prefix, "media", i, "byte_range"],
                              "byte_range needs a positive length and an s3:// or file:// URL"))
        if item["type"] == "video" and item["start"] is None:
            item["start"] = 0.0
    if req["tasks"] is not None:
        errs += job_tasks.normalize(req, prefix)
    else:
        del req["tasks"]  # stored requests stay as they were without it
    if "tasks" not in req and req["prompts"] is None:
        req["prompts"] = [default_prompt(req["media"])]
    for i, p in enumerate(req.get("prompts") or []):
        if not p.strip():
            errs.append(error([*prefix, "prompts", i], "prompt must not be blank"))
    if req["task"] == "grounding" and not any(m["type"] == "image" for m in req["media"]):
        errs.append(error([*prefix, "media"], "task 'grounding' needs at least one image"))
    if req["history"] is None:
        del req["history"]  # stored requests stay as they were without it
    elif req["task"] == "grounding":
        errs.append(error([*prefix, "history"], "task 'grounding' takes no history"))
    else:
        req["history"] = [list(turn) for turn in req["history"]]
    hook = req["webhook"]
    if hook is not None:
        try:
            hook["url"] = checker.webhook(hook["url"])
        except Exception as exc:
            errs.append(_url_error(exc, [*prefix, "webhook", "url"]))
        events = hook["events"] or list(DEFAULT_JOB_EVENTS)
        allowed = ALL_EVENTS if allow_batch_events else JOB_EVENTS
        bad = [e for e in events if e not in allowed]
        if bad:
            errs.append(error([*prefix, "webhook", "events"], f"not a job event: {', '.join(bad)}"))
        hook["events"] = list(dict.fromkeys(events))
    errs += formats.check_generation(req["generation"], [*prefix, "generation"])
    errs += _check_metadata(req["metadata"], [*prefix, "metadata"])
    if req["metadata"] is None:
        req["metadata"] = {}
    if req["ttl_seconds"] is None:
        req["ttl_seconds"] = limits.default_ttl_seconds
    if not errs and "tasks" in req:
        errs += job_tasks.check_context(req, prefix, context, count_tokens)
    elif not errs and context is not None:
        need = prompt_token_lower_bound(req, count_tokens) + req["generation"]["max_new_tokens"]
        if need > context:
            errs.append(error(
                [*prefix, "prompts"],
                f"the request needs at least {need} tokens (images/frames at 256 tokens each, the "
                f"prompts, and max_new_tokens) but the model's context is {context}",
                "context_too_long",
            ))
    if errs:
        raise InvalidRequest(_summary(errs), errors=errs)
    return req


def _model_limits(parsed: JobRequest, req: dict[str, Any], served: ModelLimits,
                  prefix: list[Any]) -> list[dict[str, Any]]:
    """The model's caps: a value the request set above one is refused; a default above one is
    lowered to it (``req`` is changed in place)."""
    errs: list[dict[str, Any]] = []
    if served.max_tiles is not None:
        for i, (item, out) in enumerate(zip(parsed.media, req["media"], strict=True)):
            if out["max_tiles"] <= served.max_tiles:
                continue
            if "max_tiles" in item.model_fields_set:
                errs.append(error([*prefix, "media", i, "max_tiles"], f"model {served.name!r} takes at most "
                                  f"{served.max_tiles} tiles per item", "exceeds_model_limit"))
            out["max_tiles"] = served.max_tiles
    gen = req["generation"]
    if served.max_new_tokens is not None and gen["max_new_tokens"] > served.max_new_tokens:
        if "max_new_tokens" in parsed.generation.model_fields_set:
            errs.append(error([*prefix, "generation", "max_new_tokens"], f"model {served.name!r} generates "
                              f"at most {served.max_new_tokens} new tokens", "exceeds_model_limit"))
        gen["max_new_tokens"] = served.max_new_tokens
    return errs


def merge_defaults(defaults: Mapping[str, Any] | None, job: Any) -> Any:
    """``defaults`` (a partial JobRequest) merged under ``job``: objects merge key by key
    (``generation``, ``webhook``, ``metadata``), anything else the job sets wins whole."""
    if not defaults or not isinstance(job, Mapping):
        return job
    return _deep_merge(defaults, job)


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def check_defaults(defaults: Any, loc: list[Any]) -> list[dict[str, Any]]:
    """Structural errors in a batch's ``defaults`` (a partial JobRequest)."""
    if defaults is None:
        return []
    if not isinstance(defaults, Mapping):
        return [error(loc, "defaults must be an object")]
    errs = [error([*loc, k], f"unknown field {k!r}") for k in defaults if k not in JOB_FIELDS]
    if errs:
        return errs
    # A complete request built from the defaults alone shows any bad value they hold.
    probe = dict(defaults)
    try:
        JobRequest.model_validate(probe)
    except ValidationError as exc:
        errs = pydantic_errors(exc, loc)
    return errs + _check_metadata(defaults.get("metadata"), [*loc, "metadata"])


def _summary(errs: list[dict[str, Any]]) -> str:
    first = errs[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def first_code(errs: list[dict[str, Any]]) -> str:
    """The problem's ``code``: the first specific error code, else ``invalid_request``."""
    for e in errs:
        if e.get("code") and e["code"] != "invalid_request":
            return str(e["code"])
    return "invalid_request"
