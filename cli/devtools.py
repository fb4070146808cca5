"""Developer tools: ``make-test-checkpoint``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from cli.common import console


class Llm(StrEnum):
    internlm2 = "internlm2"
    qwen2 = "qwen2"
    phi3 = "phi3"
    llama = "llama"


def make_test_checkpoint(
    directory: Path = typer.Argument(..., help="Folder to write (created; must be empty or absent)."),
    llm: Llm = typer.Option(Llm.internlm2, "--llm", help="Language-model layout of the checkpoint."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the weights."),
) -> None:
    """Write a tiny random-weight checkpoint in the original InternVL2 layout, with a toy
    byte-level tokenizer, for tests and demos. Its answers are noise, but every part of the
    service runs on it exactly as on a real model."""
    from models.testing import write_test_checkpoint

    if directory.exists() and any(directory.iterdir()):
        console.print(f"[red]error:[/red] {directory} is not empty")
        raise typer.Exit(2)
    path = write_test_checkpoint(directory, llm.value, seed=seed)
    console.print(f"wrote a tiny InternVL2 ({llm.value}) checkpoint to {path}")
