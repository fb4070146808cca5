"""The model registry, the routing of a job to its model's queue, and the judging of a request's
``model`` at submission (pure functions; no services)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from core.errors import InvalidRequest
from core.registry import DEFAULT_NAME, build_registry
from core.settings import Settings
from jobs.model_fleet import estimate_wait
from jobs.queue import QUEUE_GPU, caption_queue, gpu_queues
from jobs.requests import ModelLimits, RequestLimits, first_code, normalize_job_request
from jobs.transitions import ServedModel
from models.checkpoint.revision import checkpoint_revision
from tests.support.urls import AnyUrl


def registry(**kw: Any) -> Any:
    return build_registry(kw.get("models"), kw.get("default"), checkpoint="OpenGVLab/InternVL2-8B",
                          legacy_name=kw.get("legacy"), max_context_tokens=None)


def test_without_a_registry_the_one_model_keeps_a_name_of_its_own() -> None:
    r = registry()
    assert r.names == [DEFAULT_NAME] and r.default == DEFAULT_NAME
    assert r.models[DEFAULT_NAME].checkpoint == "OpenGVLab/InternVL2-8B"
    assert registry(legacy="internvl2-8b").names == ["internvl2-8b"]  # CAPTIONQ_MODEL_NAME
    assert registry(legacy="has a space").names == [DEFAULT_NAME]  # not a queue name: the fixed one
    with pytest.raises(ValueError, match="names no model"):
        registry(default="other")


def test_registry_entries_limits_default_and_aliases() -> None:
    r = registry(models={"small": "OpenGVLab/InternVL2-2B",
                         "big": {"checkpoint": "/models/26b", "max_tiles": 6, "max_new_tokens": 256}},
                 default="big")
    assert r.names == ["small", "big"] and r.default == "big"
    assert r.models["big"].limits() == {"max_tiles": 6, "max_new_tokens": 256}
    assert r.resolve(None) is r.models["big"] and r.resolve("small") is r.models["small"]
    assert r.resolve("/models/26b") is r.models["big"]  # a checkpoint as configured names its model
    assert r.resolve("nope") is None
    assert registry(models={"a": "x", "b": "y"}).default == "a"  # unset: the first entry


@pytest.mark.parametrize(("models", "default", "message"), [
    ({"a/b": "x"}, None, "model name 'a/b'"),
    ({"x" * 41: "x"}, None, "must be 1-40"),
    ({"a": {"checkpoint": "x", "tiles": 4}}, None, "unknown key"),
    ({"a": {"checkpoint": "x", "max_tiles": 0}}, None, "positive integer"),
    ({"a": {"checkpoint": "x", "max_tiles": True}}, None, "positive integer"),
    ({"a": {"max_tiles": 4}}, None, "'checkpoint'"),
    ({"a": 3}, None, "expected a checkpoint"),
    ({"a": "x"}, "b", "not in CAPTIONQ_MODELS"),
])
def test_bad_registries_say_what_is_wrong(models: dict[str, Any], default: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registry(models=models, default=default)


def test_settings_read_the_registry_and_give_each_model_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTIONQ_MODELS",
                       '{"small": "./s", "big": {"checkpoint": "./b", "max_context_tokens": 4096}}')
    monkeypatch.setenv("CAPTIONQ_DEFAULT_MODEL", "small")
    s = Settings()
    assert s.registry.names == ["small", "big"]
    big = s.for_model("big")
    assert (big.model, big.worker_model, big.max_context_tokens, big.model_name) == ("./b", "big", 4096, None)
    assert big.registry == s.registry  # the registry itself does not depend on the model served
    assert s.for_model().worker_model == "small"
    with pytest.raises(ValidationError, match="not a served model"):
        Settings(worker_model="huge")


def test_each_model_has_its_queue_and_the_default_also_takes_the_legacy_one() -> None:
    s = Settings(models={"small": "./s", "big": "./b"})
    assert caption_queue("big") == "gpu.big" and caption_queue(None) == QUEUE_GPU
    assert gpu_queues(s, "small") == ["gpu.small", QUEUE_GPU] and gpu_queues(s, "big") == ["gpu.big"]
    small = ServedModel("small", takes_unnamed=True)
    assert small.serves("small") and small.serves(None) and not small.serves("big")
    assert not ServedModel("big", takes_unnamed=False).serves(None)
    assert ServedModel().serves("anything")


LIMITS = RequestLimits(models={
    "small": ModelLimits("small", max_context_tokens=8192),
    "big": ModelLimits("big", max_context_tokens=1000, max_tiles=4, max_new_tokens=128),
    "/models/26b": ModelLimits("big", max_context_tokens=1000, max_tiles=4, max_new_tokens=128),
}, default_model="small")
IMAGE = {"type": "image", "url": "s3://b/cat.jpg"}


def judge(body: dict[str, Any]) -> dict[str, Any]:
    return normalize_job_request(body, AnyUrl(), LIMITS)


def refused(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    with pytest.raises(InvalidRequest) as exc:
        judge(body)
    return first_code(exc.value.errors), exc.value.errors


def test_a_request_gets_its_model_or_the_default_and_an_unknown_one_is_refused() -> None:
    assert judge({"prompts": ["Hi"]})["model"] == "small"
    assert judge({"prompts": ["Hi"], "model": "big"})["model"] == "big"
    assert judge({"prompts": ["Hi"], "model": "/models/26b"})["model"] == "big"  # stored by name
    code, errs = refused({"prompts": ["Hi"], "model": "huge"})
    assert code == "unknown_model" and errs[0]["loc"] == ["model"] and "big, small" in errs[0]["msg"]
    # without a registry (a service built without one) the field is neither judged nor stored
    assert "model" not in normalize_job_request({"prompts": ["Hi"]}, AnyUrl(), RequestLimits())


def test_a_models_limits_lower_defaults_and_refuse_what_asks_for_more() -> None:
    req = judge({"media": [IMAGE], "model": "big"})
    assert req["media"][0]["max_tiles"] == 4 and req["generation"]["max_new_tokens"] == 128
    assert judge({"media": [IMAGE]})["media"][0]["max_tiles"] == 12  # the other model: as before
    code, errs = refused({"media": [{**IMAGE, "max_tiles": 6}], "model": "big"})
    assert code == "exceeds_model_limit" and errs[0]["loc"] == ["media", 0, "max_tiles"]
    code, errs = refused({"prompts": ["Hi"], "model": "big", "generation": {"max_new_tokens": 129}})
    assert code == "exceeds_model_limit" and errs[0]["loc"] == ["generation", "max_new_tokens"]
    # each model's own context: 4 images x 256 + 128 new tokens fit 8192, not 1000
    four = {"media": [IMAGE] * 4, "generation": {"max_new_tokens": 128}}
    assert judge(four)["model"] == "small"
    one_tile = [{**IMAGE, "max_tiles": 1}] * 4
    assert refused({**four, "model": "big", "media": one_tile})[0] == "context_too_long"


def test_the_wait_estimate_is_rough_and_unknown_without_workers() -> None:
    assert estimate_wait(0, 10, 0, 5.0) is None  # no live worker: flagged, no estimate
    assert estimate_wait(1, 3, 4, 0.0) == 0.0  # free slots take every queued job
    assert estimate_wait(2, 100, 0, 4.0) == 25.0
    assert estimate_wait(1, 100, 0, 0.0) is None  # busy, nothing finished lately: unknown


def test_revision_is_the_hub_commit_or_a_digest_of_the_files(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub" / "snapshots" / commit
    snap.mkdir(parents=True)
    assert checkpoint_revision(snap) == commit
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    first = checkpoint_revision(folder)
    assert first.startswith("sha256:") and len(first) == 7 + 16
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("x")  # hidden bookkeeping changes nothing
    assert checkpoint_revision(folder) == first
    (folder / "model.safetensors").write_bytes(b"\0" * 999 + b"\1")  # other weights, same size
    assert checkpoint_revision(folder) != first


def test_local_mode_serves_and_accepts_one_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.local import local_settings

    monkeypatch.setenv("CAPTIONQ_MODELS", '{"a": "/x/a", "b": {"checkpoint": "/x/b", "max_tiles": 3}}')
    monkeypatch.setenv("CAPTIONQ_DEFAULT_MODEL", "b")
    # its one worker serves the default, and the API takes no job another worker would need
    s = local_settings()
    assert s.registry.names == ["b"] and s.worker_model == "b" and s.registry.models["b"].max_tiles == 3
    assert local_settings(model="a").registry.names == ["a"]
    checkpoint = local_settings(model="/x/c")  # a checkpoint, not a name: the one model
    assert checkpoint.registry.names == [DEFAULT_NAME] and checkpoint.model == "/x/c"


def test_the_openai_facade_lists_every_model_and_runs_the_one_named() -> None:
    from types import SimpleNamespace

    from api.openai.jobs import listed_models, served_models, with_model

    ctx: Any = SimpleNamespace(settings=Settings(models={"a": "/x/a", "b": "/x/b"}, default_model="b"))
    assert listed_models(ctx) == ["b", "a"] and set(served_models(ctx)) == {"a", "b", "/x/a", "/x/b"}
    assert with_model(ctx, {"prompts": ["Hi"]}, "/x/a") == {"prompts": ["Hi"], "model": "/x/a"}
    one: Any = SimpleNamespace(settings=Settings(model="/x/c"))  # no registry: as before
    assert listed_models(one) == ["c"] and with_model(one, {"prompts": ["Hi"]}, "c") == {"prompts": ["Hi"]}
