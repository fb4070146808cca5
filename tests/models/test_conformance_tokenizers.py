"""The conformance runner's tokenizers part on the kit's real tokenizer files and goldens, and on
altered copies of them (every kind of check must be able to fail)."""

from __future__ import annotations

import io
import json
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from models.conformance import run_kit
from models.text_stream import TextStream
from models.tokenizer import Tokenizer


def _goldens(kit: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((kit / "tokenizers" / "goldens.json").read_text(encoding="utf-8"))
    return data


def _expected_checks(gold: dict[str, Any]) -> int:
    n = 0
    for rec in gold["tokenizers"].values():
        n += 2 + len(rec["cases"]) + len(rec["decode_cases"]) + 2 * len(rec["incremental_decode_cases"])
        n += len(rec["batch_cases"])
    return n


def _run(kit: Path, only: set[str] | None = None) -> tuple[Any, list[str]]:
    buf = io.StringIO()
    rep = run_kit(kit, only, out=buf)
    return rep, buf.getvalue().splitlines()


def test_real_tokenizers_pass_every_case(kit_dir: Path) -> None:
    gold = _goldens(kit_dir)
    rep, lines = _run(kit_dir, {"tokenizers"})
    fails = [line for line in lines if line.startswith("FAIL")]
    assert fails == []
    assert rep.passed == _expected_checks(gold) > 200
    assert "PASS tokenizers/phi3-mini/load (LlamaSlow)" in lines
    assert "PASS tokenizers/internvl2-1b-qwen2/load (Qwen2Slow)" in lines
    assert "PASS tokenizers/internvl2-2b-internlm2/load (InternLM2Slow)" in lines


def _tokenizers_only_kit(kit_dir: Path, tmp: Path) -> Path:
    kit = tmp / "kit"
    (kit / "tokenizers").mkdir(parents=True)
    for name in _goldens(kit_dir)["tokenizers"]:
        (kit / "tokenizers" / name).symlink_to(kit_dir / "tokenizers" / name)
    shutil.copy(kit_dir / "tokenizers" / "goldens.json", kit / "tokenizers" / "goldens.json")
    return kit


def test_tokenizers_only_kit_names_the_absent_parts(kit_dir: Path, tmp_path: Path) -> None:
    kit = _tokenizers_only_kit(kit_dir, tmp_path)
    rep, lines = _run(kit)
    infos = [line.split()[1] for line in lines if line.startswith("INFO")]
    assert infos == ["preprocess:", "video:", "prompts:", "numerics:"]
    assert rep.failed == 0 and rep.passed == _expected_checks(_goldens(kit_dir))
    assert rep.summary().endswith("(4 INFO lines not counted)")


def test_altered_goldens_fail_exactly_their_checks(kit_dir: Path, tmp_path: Path) -> None:
    kit = _tokenizers_only_kit(kit_dir, tmp_path)
    gold = _goldens(kit_dir)
    names = ("internvl2-1b-qwen2", "internvl2-2b-internlm2", "phi3-mini")
    qwen, ilm, phi = (gold["tokenizers"][n] for n in names)
    qwen["cases"][0]["ids"].append(7)
    ilm["cases"][1]["decode_keep_special"] += " "
    phi["cases"][2]["ids_no_special"] = [1]
    phi["decode_cases"][0]["chat_response"] += "!"
    ilm["incremental_decode_cases"][0]["prefix_decodes_skip_special"][3] = "x"
    ilm["batch_cases"][0]["attention_mask"][0][0] = 1
    phi["facts"]["chat_stop_token_id"] = 5
    # stable_prefix_len: prefixes past it are not compared
    stable = qwen["incremental_decode_cases"][1]
    stable["stable_prefix_len"] = 3
    stable["prefix_decodes_skip_special"][5] = "anything"
    (kit / "tokenizers" / "goldens.json").write_text(json.dumps(gold), encoding="utf-8")
    rep, lines = _run(kit, {"tokenizers"})
    fails = sorted(line.split(":")[0] for line in lines if line.startswith("FAIL"))
    assert fails == sorted([
        f"FAIL tokenizers/internvl2-1b-qwen2/case/{qwen['cases'][0]['id']}",
        f"FAIL tokenizers/internvl2-2b-internlm2/case/{ilm['cases'][1]['id']}",
        f"FAIL tokenizers/phi3-mini/case/{phi['cases'][2]['id']}",
        f"FAIL tokenizers/phi3-mini/decode/{phi['decode_cases'][0]['id']}",
        f"FAIL tokenizers/internvl2-2b-internlm2/incremental/{ilm['incremental_decode_cases'][0]['id']}",
        f"FAIL tokenizers/internvl2-2b-internlm2/stream/{ilm['incremental_decode_cases'][0]['id']}",
        f"FAIL tokenizers/internvl2-2b-internlm2/batch/{ilm['batch_cases'][0]['id']}",
        "FAIL tokenizers/phi3-mini/facts",
    ])
    assert any(line.startswith(f"PASS tokenizers/internvl2-1b-qwen2/incremental/{stable['id']} "
                                   "(prefix_decodes_skip_special: first 3 of")
               for line in lines)
    assert rep.failed == 8


@pytest.mark.parametrize("same_version", [True, False])
def test_other_versions_apply_only_to_the_installed_sentencepiece(kit_dir: Path, tmp_path: Path,
                                                                  same_version: bool) -> None:
    kit = _tokenizers_only_kit(kit_dir, tmp_path)
    gold = _goldens(kit_dir)
    rec = gold["tokenizers"]["internvl2-2b-internlm2"]
    case = next(c for c in rec["cases"] if c["id"] == "nul_inner")
    env = f"sentencepiece {version('sentencepiece') if same_version else '0.0.1'} (elsewhere)"
    case["other_versions"] = [{"environment": env, "ids_no_special": case["ids_no_special"]}]
    case["ids_no_special"] = [9]
    (kit / "tokenizers" / "goldens.json").write_text(json.dumps(gold), encoding="utf-8")
    rep, lines = _run(kit, {"tokenizers"})
    line = next(x for x in lines if "internvl2-2b-internlm2/case/nul_inner" in x)
    if same_version:
        assert line.startswith("PASS") and "ids_no_special as under sentencepiece" in line
    else:
        assert line.startswith("FAIL") and rep.failed == 1


def test_stream_holds_back_what_clean_up_may_still_rewrite(kit_dir: Path) -> None:
    tok = Tokenizer.load(kit_dir / "tokenizers" / "internvl2-2b-internlm2", require_image_tokens=False)
    text = "Use `x != y`, it 's fine , do n't worry ! ok"
    ids = [*tok.encode(text, add_special_tokens=False), tok.stop_id("<|im_end|>")]
    deltas: list[str] = []
    stream = TextStream(tok, "<|im_end|>", deltas.append)
    for k, tid in enumerate(ids, 1):
        stream(tid)
        final_so_far = tok.decode(ids[:k]).split("<|im_end|>")[0].strip()
        assert final_so_far.startswith("".join(deltas))  # never shows what later changes
    final = tok.decode(ids).split("<|im_end|>")[0].strip()
    stream.finish(final)
    assert final == "Use `x!= y`, it's fine, don't worry! ok"
    assert "".join(deltas) == final and len(deltas) > 5


def test_text_only_folder_needs_the_flag(kit_dir: Path) -> None:
    from models.errors import CheckpointCorrupt

    with pytest.raises(CheckpointCorrupt, match="IMG_CONTEXT"):
        Tokenizer.load(kit_dir / "tokenizers" / "phi3-mini")
    tok = Tokenizer.load(kit_dir / "tokenizers" / "phi3-mini", require_image_tokens=False)
    assert tok.img_context_id == -1 and tok.encode("<|user|>\nHi") == [29871, 32010, 18567]
    assert tok.decode([32010, 18567, 32007], skip_special_tokens=True) == "<|user|> Hi <|end|>"
