"""Developer tools: ``make-test-checkpoint``."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

from cli.checkpoint_folder import FolderInUse, write_once
from cli.common import console, fail

# The demo checkpoint's context: a default image (up to 12 tiles + thumbnail, 256 tokens each)
# or an 8-frame video, with the default 512 new tokens, fits with room to spare.
DEMO_CONTEXT = 8192


class Llm(StrEnum):
    internlm2 = "internlm2"
    qwen2 = "qwen2"
    phi3 = "phi3"
    llama = "llama"


def _set_context(folder: Path, context: int) -> None:
    """The language model's context (``llm_config.max_position_embeddings``) of a written
    checkpoint; positions below the original value are computed the same either way."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["llm_config"]["max_position_embeddings"] = context
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def make_test_checkpoint(
    directory: Path = typer.Argument(..., help="Folder to write. One written with the same settings is reused as it is."),
    llm: Llm = typer.Option(Llm.internlm2, "--llm", help="Language-model layout of the checkpoint."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the weights."),
    context: int = typer.Option(DEMO_CONTEXT, "--context", min=512, max=131072, help="Context of the language model in tokens."),
    force: bool = typer.Option(False, "--force", help="Rewrite the folder even if it holds a checkpoint or other files."),
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

    def write(folder: Path) -> None:
        write_test_checkpoint(folder, llm.value, seed=seed, tokenizer=tokenizer)
        _set_context(folder, context)

    kind = tokenizer_family(tokenizer, llm.value) if tokenizer is not None else llm.value
    recipe = {"kind": "tiny-internvl2", "llm": kind, "seed": seed, "context": context,
              "tokenizer": str(tokenizer.resolve()) if tokenizer is not None else None}
    try:
        outcome = write_once(directory, recipe, write, force=force)
    except FolderInUse as exc:
        raise fail(str(exc), 2) from None
    if outcome == "reused":
        console.print(f"reusing the tiny InternVL2 ({kind}) checkpoint in {directory} "
                      "(same settings; --force rewrites it)", highlight=False)
    else:
        console.print(f"wrote a tiny InternVL2 ({kind}, context {context}) checkpoint to "
                      f"{directory}", highlight=False)
