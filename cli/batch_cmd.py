"""``captionq batch``: bulk batches from a source, with a live progress bar; download; retry.

    captionq batch create s3://bucket/photos/**/*.jpg --prompt "Describe the photo." \\
        --task tags="List five tags." --output s3://bucket/out/ --format jsonl,parquet,sidecar
    captionq batch download bat_… ./out
    captionq batch retry bat_… [--code media_not_found]

``create`` follows the batch with a progress bar (done/failed, items per second, time left);
Ctrl-C detaches (the batch keeps running on the service) and says how to come back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.client import API_KEY, API_URL, TERMINAL_BATCH, Api, _print, api_or_exit, problem_line
from cli.common import console, fail

app = typer.Typer(help="Bulk batches: create one from a folder, an S3 prefix, shards or a dataset; "
                       "download its outputs; retry its failures.", no_args_is_help=True)

FORMATS = ("jsonl", "parquet", "sidecar")
GLOB_SAFE = "/*?[]{},!"


def as_url(where: str, what: str) -> str:
    """An ``s3://``/``file://`` URL as given; a local path as a ``file://`` URL (globs kept)."""
    if "://" in where:
        if not where.startswith(("s3://", "file://")):
            raise fail(f"{what} {where!r}: use s3://bucket/prefix/ or a local path", 2)
        return where
    path = os.path.abspath(os.path.expanduser(where))
    if where.endswith("/") or os.path.isdir(path):
        path += "/"
    return "file://" + quote(path, safe=GLOB_SAFE)


def parse_tasks(specs: list[str]) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for spec in specs:
        name, eq, prompt = spec.partition("=")
        if not eq or not name.strip() or not prompt.strip():
            raise fail(f"--task {spec!r}: expected NAME=PROMPT, e.g. --task tags=\"List five tags.\"", 2)
        if any(t["name"] == name.strip() for t in tasks):
            raise fail(f"--task {name.strip()!r} is given twice", 2)
        tasks.append({"name": name.strip(), "prompts": [prompt]})
    return tasks


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise fail(f"--format {text!r}: choose from {', '.join(FORMATS)} (comma separated)", 2)
    return list(dict.fromkeys(formats))


def build_body(source: str, prompts: list[str], tasks: list[str], output: str, formats: str,
               include: list[str], exclude: list[str], source_format: str | None, image_column: str | None,
               id_column: str | None, metadata_columns: list[str], max_new_tokens: int | None,
               completion_window: str | None, resume_from: str | None) -> dict[str, Any]:
    """The ``POST /v1/batches`` body for these options."""
    src: dict[str, Any] = {"url": as_url(source, "SOURCE")}
    for key, value in (("include", include), ("exclude", exclude), ("format", source_format),
                       ("image_column", image_column), ("id_column", id_column),
                       ("metadata_columns", metadata_columns)):
        if value:
            src[key] = value
    defaults: dict[str, Any] = {}
    if prompts:
        defaults["prompts"] = prompts
    if max_new_tokens is not None:
        defaults["generation"] = {"max_new_tokens": max_new_tokens}
    body: dict[str, Any] = {"source": src, "output_url": as_url(output, "--output"),
                            "output_formats": parse_formats(formats)}
    if tasks:
        body["tasks"] = parse_tasks(tasks)
    if defaults:
        body["defaults"] = defaults
    if completion_window:
        body["completion_window"] = int(completion_window) if completion_window.isdigit() else completion_window
    if resume_from:
        body["resume_from"] = resume_from
    return body


def follow(api: Api, batch_id: str, *, every: float = 1.0) -> dict[str, Any]:
    """Poll the batch with a progress bar until it ends; Ctrl-C detaches (exit 0)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("failed {task.fields[failed]}"), TextColumn("{task.fields[rate]} items/s"),
               TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn())
    start, first_done = time.monotonic(), None
    try:
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
            bar = progress.add_task(batch_id, total=None, failed=0, rate="-", eta="-")
            while True:
                batch: dict[str, Any] = api.request("GET", f"/v1/batches/{batch_id}")
                c = batch["counts"]
                done = c["succeeded"] + c["failed"] + c["canceled"]
                first_done = done if first_done is None else first_done
                elapsed = time.monotonic() - start
                rate = (done - first_done) / elapsed if elapsed > 0 else 0.0
                eta = f"{(c['total'] - done) / rate:.0f}s" if rate > 0 else "-"
                progress.update(bar, total=c["total"], completed=done, failed=c["failed"],
                                rate=f"{rate:.1f}", eta=eta, description=f"{batch_id} {batch['status']}")
                if batch["status"] in TERMINAL_BATCH:
                    return batch
                time.sleep(every)
    except KeyboardInterrupt:
        console.print(f"detached: {batch_id} keeps running. `captionq batch download {batch_id} DEST` "
                      "when it ends, `captionq status` meanwhile.", highlight=False)
        raise typer.Exit(0) from None


@app.command("create")
def create(
    source: str = typer.Argument(..., help="s3://bucket/prefix/**/*.jpg, a local folder (local mode), shards s3://…/shard-{000000..000099}.tar, a saved HF dataset folder or *.parquet."),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="Prompt (repeat for several rounds)."),
    task: list[str] = typer.Option([], "--task", "-t", help="NAME=PROMPT: a named task on every item (repeat); one output column each."),
    output: str = typer.Option(..., "--output", "-o", help="Where outputs go: s3://bucket/prefix/ or a local folder (local mode)."),
    formats: str = typer.Option("jsonl", "--format", help="Comma separated: jsonl,parquet,sidecar."),
    include: list[str] = typer.Option([], "--include", help="Only keys matching this glob (repeat)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Leave out keys matching this glob (repeat)."),
    source_format: str | None = typer.Option(None, "--source-format", help="files, webdataset, hf_dataset or parquet (default: from SOURCE)."),
    image_column: str | None = typer.Option(None, "--image-column", help="Datasets/Parquet: the image column (default image)."),
    id_column: str | None = typer.Option(None, "--id-column", help="Datasets/Parquet: the column used as custom_id."),
    metadata_column: list[str] = typer.Option([], "--metadata-column", help="Datasets/Parquet: a column copied into metadata (repeat)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Answer length limit."),
    completion_window: str | None = typer.Option(None, "--completion-window", help="End the batch as expired after this long (e.g. 24h)."),
    resume_from: str | None = typer.Option(None, "--resume-from", help="bat_…: skip the items that succeeded there."),
    detach: bool = typer.Option(False, "--detach", help="Print the batch and return at once."),
    api_url: str = API_URL,
    api_key: str | None = API_KEY,
) -> None:
    """Create a batch from a source and follow it (Ctrl-C detaches)."""
    body = build_body(source, prompt, task, output, formats, include, exclude, source_format, image_column,
                      id_column, metadata_column, max_new_tokens, completion_window, resume_from)
    api = api_or_exit(api_url, api_key)
    batch = api.request("POST", "/v1/batches", json=body)
    if detach:
        _print(batch)
        return
    console.print(f"{batch['id']}: {batch['counts']['total']} items", highlight=False)
    final = follow(api, batch["id"])
    _print(final)
    if final["counts"]["failed"]:
        console.print(f"{final['counts']['failed']} failed: `captionq batch retry {final['id']}` runs them again",
                      highlight=False)


@app.command("retry")
def retry(
    batch_id: str = typer.Argument(..., help="bat_…"),
    code: list[str] = typer.Option([], "--code", help="Only failures with this error code (repeat)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the batch until it ends again."),
    api_url: str = API_URL,
    api_key: str | None = API_KEY,
) -> None:
    """Run a batch's failed jobs again, as new attempts in the same batch."""
    if not batch_id.startswith("bat_"):
        raise fail(f"{batch_id!r} is not a batch id (bat_…)", 2)
    api = api_or_exit(api_url, api_key)
    batch = api.request("POST", f"/v1/batches/{batch_id}/retry", json={"error_codes": code} if code else None)
    console.print(f"{batch_id}: {batch['retried']} job(s) queued again", highlight=False)
    _print(follow(api, batch_id) if wait and batch["retried"] else batch)


@app.command("download")
def download(
    batch_id: str = typer.Argument(..., help="bat_…"),
    dest: Path = typer.Argument(..., help="A local folder (created)."),
    api_url: str = API_URL,
    api_key: str | None = API_KEY,
) -> None:
    """Copy a batch's outputs into DEST: every file under its output_url when this machine can
    read it (a local folder, or S3 with credentials), else results.jsonl and errors.jsonl from
    the API."""
    if not batch_id.startswith("bat_"):
        raise fail(f"{batch_id!r} is not a batch id (bat_…)", 2)
    api = api_or_exit(api_url, api_key)
    batch = api.request("GET", f"/v1/batches/{batch_id}")
    dest.mkdir(parents=True, exist_ok=True)
    url = batch.get("output_url")
    if url and batch.get("output_formats") and _copy_outputs(url, dest):
        console.print(f"{batch_id} ({batch['status']}): outputs of {url} copied to {dest}", highlight=False)
        return
    n, failed = _results_from_api(api, batch_id, dest)
    console.print(f"{batch_id} ({batch['status']}): {n} results, {failed} errors written to {dest}",
                  highlight=False)


def _copy_outputs(url: str, dest: Path) -> bool:
    """Every object under ``url`` into ``dest``; False when it cannot be read from here."""
    if url.startswith("file://"):
        src = Path(unquote(urlparse(url).path))
        if not (src / "manifest.json").exists():
            return False
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return True
    from core.settings import load_settings
    from storage.config import StorageConfig
    from storage.listing import GlobFilter, list_objects
    from storage.s3 import s3_client

    try:
        config = StorageConfig.from_settings(load_settings())
        client = s3_client(config)
        for obj in list_objects(url, config, GlobFilter()):
            bucket, _, key = obj.url[5:].partition("/")
            target = dest / obj.rel
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
    except Exception as exc:
        console.print(f"cannot read {url} from here ({type(exc).__name__}); using the API's results",
                      highlight=False)
        return False
    return True


def _results_from_api(api: Api, batch_id: str, dest: Path) -> tuple[int, int]:
    n = failed = 0
    with api.http.stream("GET", f"/v1/batches/{batch_id}/results") as resp, \
            open(dest / "results.jsonl", "w", encoding="utf-8") as res, \
            open(dest / "errors.jsonl", "w", encoding="utf-8") as err:
        if resp.status_code >= 400:
            resp.read()
            raise fail(f"HTTP {resp.status_code} {problem_line(resp)}", 2 if resp.status_code < 500 else 1)
        for line in resp.iter_lines():
            if not line:
                continue
            res.write(line + "\n")
            n += 1
            if json.loads(line)["status"] != "succeeded":
                err.write(line + "\n")
                failed += 1
    return n, failed
