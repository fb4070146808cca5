"""The context a submission is checked against comes from the checkpoint's data files
(config.json and the tokenizer; no torch), capped by ``max_context_tokens``; a prompt far past
it is 422 ``context_too_long`` at submission instead of a job that fails later."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.context_limit import load_context_limit
from core.settings import Settings
from tests.api import helpers
from tests.api.helpers import problem_of

CONTEXT = 1280
WORDS = ["the", "cat", "sat", "on", "a", "mat", "describe", "image"]


def write_checkpoint(folder: Path) -> Path:
    """config.json as InternVL2 ships it (the LLM's context under llm_config) and a word-level
    tokenizer.json: one token per word."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["InternVLChatModel"],
              "llm_config": {"architectures": ["InternLM2ForCausalLM"], "max_position_embeddings": CONTEXT},
              "vision_config": {"image_size": 448}}
    (folder / "config.json").write_text(json.dumps(config))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_the_context_comes_from_the_checkpoint_and_a_setting_caps_it(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "ckpt")
    derived = load_context_limit(Settings(model=str(ckpt)))
    assert derived.max_tokens == CONTEXT
    assert derived.count_tokens is not None and derived.count_tokens("the cat sat on a mat") == 6
    assert load_context_limit(Settings(model=str(ckpt), max_context_tokens=1000)).max_tokens == 1000
    assert load_context_limit(Settings(model=str(ckpt), max_context_tokens=9000)).max_tokens == CONTEXT


def test_a_dynamic_ntk_model_has_no_model_limit_only_the_setting(tmp_path: Path) -> None:
    """InternLM2's dynamic-NTK rope answers past max_position_embeddings (the engine runs such
    a prompt alone), so only the operator's cap applies at submission."""
    ckpt = write_checkpoint(tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["llm_config"]["rope_scaling"] = {"type": "dynamic", "factor": 2.0}
    (ckpt / "config.json").write_text(json.dumps(config))
    assert load_context_limit(Settings(model=str(ckpt))).max_tokens is None
    assert load_context_limit(Settings(model=str(ckpt), max_context_tokens=4096)).max_tokens == 4096


def test_an_unreadable_checkpoint_leaves_the_setting(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    assert load_context_limit(Settings(model=missing)).max_tokens is None
    assert load_context_limit(Settings(model=missing, max_context_tokens=4096)).max_tokens == 4096
    hub = load_context_limit(Settings(model="nobody-has/this-model-cached", max_context_tokens=2048))
    assert (hub.max_tokens, hub.count_tokens) == (2048, None)


@pytest.mark.services
def test_a_prompt_far_past_the_context_is_422_at_submission(api_settings, tenant_a, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ckpt = write_checkpoint(tmp_path / "ckpt")
    settings = api_settings.model_copy(update={"model": str(ckpt), "max_context_tokens": None})
    srv = helpers.start_server(settings)
    try:
        with helpers.client(srv.base_url, tenant_a.api_key) as c:
            # 6,000 tokens in 24,000 characters: by characters alone (128 a token at most) it
            # would pass as ~190 tokens.
            far = " ".join(["cat"] * 6000)
            resp = c.post("/v1/jobs", json={"prompts": [far]})
            assert resp.status_code == 422, resp.text[:300]
            body = problem_of(resp)
            assert body["code"] == "context_too_long"
            assert ["prompts"] in [e["loc"] for e in body["errors"]]
            assert str(CONTEXT) in body["detail"]
            fits = " ".join(["cat"] * 500)  # 500 + 512 new tokens < 1280
            assert c.post("/v1/jobs", json={"prompts": [fits]}).status_code == 202
            over = c.post("/v1/jobs", json={"prompts": [fits], "generation": {"max_new_tokens": 1000}})
            assert problem_of(over)["code"] == "context_too_long"
    finally:
        srv.stop()
