"""`captionq caption` in an empty folder, with no services and no settings, starts the local mode
in-process (SQLite, filesystem broker, a real worker process) and prints the official chat()
answer recorded in the conformance kit for that image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "tests" / "data" / "conformance"

pytestmark = pytest.mark.slow


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTIONQ_", "AWS_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["HOME"] = str(tmp_path)  # no stray .env or hub cache
    return env


def test_caption_prints_the_official_chat_answer(tmp_path):
    golden = json.loads((KIT / "goldens" / "internvl2-internlm2" / "numerics.json").read_text())
    e1 = next(e for e in golden["chat_end_to_end"] if e["id"].startswith("E1"))
    first_round = e1["rounds"][0]
    assert e1["question"] == "<image>\nPlease describe the image shortly."

    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "caption", str(KIT / "images" / "img04_448x448.png"),
         "--model", str(KIT / "models" / "internvl2-internlm2"),
         "--prompt", "Please describe the image shortly.", "--max-new-tokens", "16", "--json"],
        cwd=tmp_path, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["status"] == "succeeded"
    assert answer["text"] == first_round["response"]
    assert answer["metrics"]["output_tokens"] == len(first_round["output_ids"][0])
    assert list(tmp_path.iterdir()) == [], "the one-shot leaves nothing behind in the folder"
