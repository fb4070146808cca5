"""The conformance numerics checks on both kit checkpoints: every check must pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.conformance.numerics_checks import run_numerics_checks

VARIANTS = ("internvl2-internlm2", "internvl2-qwen2")


@pytest.mark.parametrize("variant", VARIANTS)
def test_numerics_checks_all_pass(kit_dir: Path, variant: str) -> None:
    lines: list[tuple[str, bool | None, str]] = []
    run_numerics_checks(kit_dir, variant, lambda name, ok, detail: lines.append((name, ok, detail)))
    failed = [f"{n}: {d}" for n, ok, d in lines if ok is False]
    assert not failed, "\n".join(failed)
    infos = [n for n, ok, _ in lines if ok is None]  # diagnostics: compared nothing, not passes
    assert all("QUIRK" in n for n in infos) and (bool(infos) == (variant == "internvl2-internlm2"))
    names = " ".join(n for n, _, _ in lines)
    # every golden family was really compared (not silently skipped)
    for expected in ("vision_model.embeddings.P1", "vision_model.last_hidden_state.P1", "extract_feature.P3",
                     "F0_text forward logits", "F4_long_two_images greedy generation", "B2_batch batch ids",
                     "with_stop_token", "E1_chat_one_tile_two_rounds round 2", "E4_batch_chat"):
        assert expected in names, expected
    if variant == "internvl2-internlm2":
        assert "F5_crosses_rope_threshold_during_generation greedy generation" in names


def test_numerics_checks_report_a_broken_checkpoint(kit_dir: Path, tmp_path: Path) -> None:
    """A checkpoint the engine cannot load gives one failing line, not an exception."""
    (tmp_path / "models" / "broken").mkdir(parents=True)
    (tmp_path / "goldens" / "broken").mkdir(parents=True)
    lines: list[tuple[str, bool | None, str]] = []
    run_numerics_checks(tmp_path, "broken", lambda n, ok, d: lines.append((n, ok, d)))
    assert len(lines) == 1 and not lines[0][1]
