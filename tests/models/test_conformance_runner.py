"""The conformance runner on the kit (non-numerics parts) and on altered kits."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.conformance import run_kit
from models.conformance.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def _expected_checks(kit: Path) -> int:
    pre = json.loads((kit / "preprocess" / "preprocess.json").read_text(encoding="utf-8"))
    vid = json.loads((kit / "video" / "video.json").read_text(encoding="utf-8"))
    pro = json.loads((kit / "prompts" / "prompts.json").read_text(encoding="utf-8"))
    n = 1 + len(pre["images"]) + len(pre["cases"]) + 1
    n += 1 + sum(1 + len(v["runs"]) for v in vid["videos"])
    n += sum(1 + len(t["cases"]) for t in pro["templates"].values())
    return n


def test_cli_on_kit(kit_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "models.conformance", str(kit_dir), "--only", "preprocess,video,prompts"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    n = _expected_checks(kit_dir)
    assert lines[-1] == f"{n} passed, 0 failed"
    assert len(lines) == n + 1 and all(line.startswith("PASS ") for line in lines[:-1])


def _altered_kit(kit: Path, tmp: Path) -> Path:
    out = tmp / "kit"
    (out / "prompts").mkdir(parents=True)
    (out / "preprocess").mkdir()
    (out / "video").mkdir()
    (out / "images").symlink_to(kit / "images")
    pro = json.loads((kit / "prompts" / "prompts.json").read_text(encoding="utf-8"))
    templates = pro["templates"]
    templates["mystery-template"] = templates.pop("phi3-chat")  # unknown name, known rules
    templates["internlm2-chat"]["cases"][0]["query"] += " tampered"
    (out / "prompts" / "prompts.json").write_text(json.dumps(pro), encoding="utf-8")
    pre = json.loads((kit / "preprocess" / "preprocess.json").read_text(encoding="utf-8"))
    pre["cases"] = pre["cases"][:2]
    pre["cases"][1]["grid_cols_rows"] = [7, 7]
    pre["images"] = pre["images"][:1]
    pre["find_closest_aspect_ratio_table"] = pre["find_closest_aspect_ratio_table"][:20]
    (out / "preprocess" / "preprocess.json").write_text(json.dumps(pre), encoding="utf-8")
    vid = json.loads((kit / "video" / "video.json").read_text(encoding="utf-8"))
    vid["get_index_table"] = vid["get_index_table"][:5]
    vid["get_index_table"][4]["indices"] = [123]
    vid["videos"] = []
    (out / "video" / "video.json").write_text(json.dumps(vid), encoding="utf-8")
    return out


def test_altered_kit_reports_exactly_what_differs(kit_dir: Path, tmp_path: Path) -> None:
    kit = _altered_kit(kit_dir, tmp_path)
    buf = io.StringIO()
    rep = run_kit(kit, None, out=buf)
    fails = sorted(line.split(":")[0] for line in buf.getvalue().splitlines() if line.startswith("FAIL"))
    first_case = json.loads((kit / "prompts" / "prompts.json").read_text(encoding="utf-8"))[
        "templates"]["internlm2-chat"]["cases"][0]["id"]
    assert fails == sorted([
        "FAIL preprocess/case/img01_37x1000/max2",
        "FAIL video/get_index_table",
        f"FAIL prompts/internlm2-chat/{first_case}",
        "FAIL prompts/mystery-template/template",
    ])
    assert rep.failed == 4 and rep.passed > 20  # the unknown template's cases still pass
    assert "PASS prompts/mystery-template/batch_chat_2" in buf.getvalue()
    assert main([str(kit), "--only", "prompts"]) == 1
    assert main([str(kit), "--only", "preprocess"]) == 1


def test_missing_parts_and_numerics_module(kit_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    kit = _altered_kit(kit_dir, tmp_path)
    buf = io.StringIO()
    rep = run_kit(kit, {"numerics"}, out=buf)  # no models/ + goldens/ in this kit
    assert rep.failed == 1 and "no numerics data" in buf.getvalue()
    monkeypatch.setitem(sys.modules, "models.conformance.numerics_checks", None)  # import fails
    buf = io.StringIO()
    rep = run_kit(kit_dir, {"numerics"}, out=buf)
    assert (rep.passed, rep.failed) == (0, 1)
    assert buf.getvalue().startswith("FAIL numerics: models.conformance.numerics_checks is not available")
    buf = io.StringIO()
    assert run_kit(tmp_path / "nowhere", None, out=buf).failed == 1


def test_bad_only_option(kit_dir: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(kit_dir), "--only", "preprocess,bogus"])
    assert e.value.code == 2
