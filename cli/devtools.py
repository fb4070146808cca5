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
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", exists=True, file_okay=False,
        help="A real tokenizer folder (InternVL2-1B/2B/8B, Phi-3...) instead of the toy one; "
             "the LLM layout then follows its tokenizer_class (--llm llama keeps Llama)."),
) -> None:
    """Write a tiny random-weight checkpoint in the original InternVL2 layout, with a toy
    byte-level tokenizer, for tests and demos. Its answers are noise, but every part of the
    service runs on it exactly as on a real model."""
    from models.testing import write_test_checkpoint
    from models.testing.real_tokenizer import tokenizer_family

    if directory.exists() and any(directory.iterdir()):
        console.print(f"[red]error:[/red] {directory} is not empty")
        raise typer.Exit(2)
    path = write_test_checkpoint(directory, llm.value, seed=seed, tokenizer=tokenizer)
    kind = tokenizer_family(tokenizer, llm.value) if tokenizer is not None else llm.value
    console.print(f"wrote a tiny InternVL2 ({kind}) checkpoint to {path}")
