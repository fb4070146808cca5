"""``captionq models``: fetch checkpoints from the Hugging Face hub ahead of time, and list the
served models with their workers and queues (``GET /v1/models``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cli.client import API_KEY, API_URL, Api
from cli.common import console, fail
from models.errors import EngineError

app = typer.Typer(help="Fetch InternVL2 checkpoints into the Hugging Face cache; list the served models.",
                  no_args_is_help=True)

COLUMNS = ("MODEL", "STATUS", "WORKERS", "SLOTS", "FREE", "QUEUED", "RUNNING", "OLDEST", "WAIT", "CHECKPOINT")


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}s"


def table(body: dict[str, Any]) -> str:
    """The served models as aligned text columns (``*``: the default model; ``-``: unknown)."""
    rows = [COLUMNS] + [(
        m["id"] + ("*" if m["default"] else ""), m["status"], str(m["live_workers"]), str(m["slots"]),
        str(m["free_slots"]), str(m["queued_jobs"]), str(m["running_jobs"]), _seconds(m["oldest_queued_seconds"]),
        _seconds(m["estimated_wait_seconds"]), m["checkpoint"]) for m in body["data"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows)


@app.command("list")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON instead of a table."),
    api_url: str = API_URL,
    api_key: str | None = API_KEY,
) -> None:
    """The served models: live workers, slots, queued jobs, oldest queued job and a rough wait
    (no_live_workers: no worker serves the model now; its jobs wait)."""
    body = Api(api_url, api_key).request("GET", "/v1/models")
    typer.echo(json.dumps(body, ensure_ascii=False, indent=2) if as_json else table(body))


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
