"""Tiny random-weight checkpoints around the real InternVL2 tokenizers (``make-test-checkpoint
--tokenizer``) run jobs end to end: through the engine for each family, and through a real
worker (``captionq caption``, local mode) for one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from models import prompts
from models.engine import ChatRequest, Engine, GenerationParams
from models.preprocess import load_image
from models.testing import write_test_checkpoint
from models.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
TOKENIZERS = ROOT / "tests" / "data" / "conformance" / "tokenizers"
IMAGE = ROOT / "tests" / "data" / "conformance" / "images" / "img04_448x448.png"
FAMILIES = {"internvl2-1b-qwen2": ("qwen2", "Hermes-2"),
            "internvl2-2b-internlm2": ("internlm2", "internlm2-chat"),
            "phi3-mini": ("phi3", "phi3-chat")}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real-tok")
    out = {}
    for name in FAMILIES:
        if name == "phi3-mini":  # one through the command line
            result = CliRunner().invoke(app, ["make-test-checkpoint", str(root / name), "--tokenizer",
                                              str(TOKENIZERS / name), "--seed", "3"])
            assert result.exit_code == 0, result.output
            assert "tiny InternVL2 (phi3, " in result.output
            out[name] = root / name
        else:
            out[name] = write_test_checkpoint(root / name, "internlm2", seed=3, tokenizer=TOKENIZERS / name)
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_engine_runs_a_job_with_the_real_tokenizer(checkpoints: dict[str, Path], name: str) -> None:
    llm, template = FAMILIES[name]
    folder = checkpoints[name]
    config = json.loads((folder / "config.json").read_text())
    assert config["template"] == template and config["llm_config"]["model_type"] == llm
    assert not list(folder.glob("*.py"))
    engine = Engine.load(folder, device="cpu", dtype="float32")
    tok = engine.tokenizer
    assert config["llm_config"]["vocab_size"] == tok.vocab_size
    pv = torch.from_numpy(load_image(IMAGE.read_bytes(), max_num=2).pixel_values)
    deltas: list[str] = []
    req = ChatRequest("<image>\nDescribe the image.", pixel_values=pv,
                      params=GenerationParams(max_new_tokens=6), on_token=deltas.append)
    prepared = engine.prepare(req)
    assert prepared.input_ids == tok.encode(prepared_query(engine, req))
    assert prepared.num_context_tokens == engine.spec.num_image_token * int(pv.shape[0])
    res = engine.generate_batch([prepared])[0]
    assert 1 <= res.output_tokens <= 6 and res.finish_reason in ("length", "stop")
    assert res.text == prompts.clean_response(engine.template, tok.decode(res.output_ids))
    assert "".join(deltas) == res.text


def prepared_query(engine: Engine, req: ChatRequest) -> str:
    assert req.pixel_values is not None
    return prompts.build_query(engine.template, req.question, None, [int(req.pixel_values.shape[0])],
                               num_image_token=engine.spec.num_image_token,
                               num_tiles=int(req.pixel_values.shape[0]))


def test_phi3_folder_gets_internvl_tokens(checkpoints: dict[str, Path]) -> None:
    folder = checkpoints["phi3-mini"]
    tok = Tokenizer.load(folder)
    original = Tokenizer.load(TOKENIZERS / "phi3-mini", require_image_tokens=False)
    assert (tok.img_start_id, tok.img_end_id, tok.img_context_id) == (32011, 32012, 32013)
    assert not (folder / "tokenizer.json").exists()  # would disagree with the slow files
    text = "<|user|>\nHi there <|end|>\n<|assistant|>\n"
    assert tok.encode(text) == original.encode(text)
    ids = [18567, tok.img_context_id, 18567]
    assert tok.decode(ids) == "HiHi"  # a special token: dropped before the text is joined
    assert tok.decode(ids, skip_special_tokens=False) == "Hi <IMG_CONTEXT> Hi"


@pytest.mark.slow
def test_a_real_worker_answers_with_the_qwen2_tokenizer(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = checkpoints["internvl2-1b-qwen2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTIONQ_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "caption", str(IMAGE), "--model", str(folder),
         "--prompt", "Describe the image.", "--max-new-tokens", "6", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["status"] == "succeeded"
    engine = Engine.load(folder, device="cpu", dtype="float32")
    pv = torch.from_numpy(load_image(IMAGE.read_bytes()).pixel_values)
    expected = engine.chat("<image>\nDescribe the image.", pv, params=GenerationParams(max_new_tokens=6))
    assert answer["text"] == expected.text
    assert answer["metrics"]["output_tokens"] == expected.output_tokens
