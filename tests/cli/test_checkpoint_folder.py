"""make-test-checkpoint's folder handling (cli.checkpoint_folder): the same recipe is reused,
another one or foreign files are refused unless forced, and a failed write leaves the folder as it
was — the new content appears only by a rename of a complete staging folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.checkpoint_folder import RECIPE_FILE, FolderInUse, write_once


def writer(text: str, calls: list[Path]):  # type: ignore[no-untyped-def]
    def write(folder: Path) -> None:
        calls.append(folder)
        (folder / "weights.bin").write_text(text)
    return write


def test_same_recipe_reused_other_refused_force_rewrites(tmp_path):
    target, calls = tmp_path / "ckpt", []
    assert write_once(target, {"seed": 0}, writer("a", calls)) == "written"
    assert write_once(target, {"seed": 0}, writer("b", calls)) == "reused"
    assert len(calls) == 1 and (target / "weights.bin").read_text() == "a"
    assert calls[0] != target, "written in a staging folder, then renamed"
    with pytest.raises(FolderInUse, match="ckpt was written with other settings; --force rewrites it"):
        write_once(target, {"seed": 1}, writer("c", calls))
    assert write_once(target, {"seed": 1}, writer("c", calls), force=True) == "rewritten"
    assert (target / "weights.bin").read_text() == "c"
    assert (target / RECIPE_FILE).read_text().strip() == '{"seed": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no staging folder left"


def test_foreign_files_refused_and_failed_write_changes_nothing(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FolderInUse, match="mine is not empty; --force rewrites it"):
        write_once(target, {"seed": 0}, writer("a", []))

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_once(target, {"seed": 0}, broken, force=True)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_an_empty_folder_is_written_into(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    assert write_once(target, {"seed": 0}, writer("a", [])) == "written"
    assert (target / "weights.bin").read_text() == "a"
