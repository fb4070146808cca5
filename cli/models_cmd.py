"""``captionq models``: fetch checkpoints from the Hugging Face hub ahead of time."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import console, fail
from models.errors import EngineError

app = typer.Typer(help="Fetch InternVL2 checkpoints into the Hugging Face cache.", no_args_is_help=True)


@app.command("pull")
def pull(
    model: str = typer.Argument(..., help="Hub id, e.g. OpenGVLab/InternVL2-8B."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir",
                                          help="Hub cache folder (default: huggingface_hub's, HF_HUB_CACHE)."),
) -> None:
    """Download a model's config, tokenizer and safetensors files (no code, no pickles) into the
    Hugging Face cache, where workers and `captionq caption --model ID` find it. Prints the
    snapshot folder. Refused when HF_HUB_OFFLINE is set or the hub is unreachable."""
    from models.checkpoint.download import cached_snapshot, download_model
    from models.checkpoint.source import looks_like_hub_id

    if not looks_like_hub_id(model):
        raise fail(f"{model!r} is not a hub id (owner/name)", 2)
    try:
        folder = cached_snapshot(model, cache_dir)
        if folder is not None and (folder / "config.json").is_file():
            console.print(f"{model} is already in the cache")
        else:
            folder = download_model(model, cache_dir=cache_dir)
    except EngineError as exc:
        raise _refused(exc) from None
    typer.echo(str(folder))


def ensure_cached(model: str) -> None:
    """Before a local stack starts: a hub id that is not cached downloads here, in the
    foreground with a progress bar, instead of silently inside the worker; a refusal is a
    one-line error. Local folders and cached ids pass through."""
    from models.checkpoint.download import cached_snapshot, download_model
    from models.checkpoint.source import looks_like_hub_id
    if Path(model).expanduser().is_dir() or not looks_like_hub_id(model):
        return
    try:
        if cached_snapshot(model) is None:
            console.print(f"downloading {model} from the Hugging Face hub…")
            download_model(model)
    except EngineError as exc:
        raise _refused(exc) from None


def _refused(exc: EngineError) -> typer.Exit:
    """One line, never wrapped at the terminal width (scripts grep it)."""
    console.print(f"[red]error:[/red] {exc.code}: {exc.message}", soft_wrap=True)
    return typer.Exit(1)
