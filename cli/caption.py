"""``captionq caption FILE_OR_URL…``: the one-shot form of the service.

It submits one job per input to a running local mode (``--api-url``) or, when none answers,
starts one in-process in a temporary folder (SQLite, filesystem broker, a real worker process),
waits with a progress display and prints the answers. The job runs exactly as in production.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import httpx
import typer

from cli.client import Api
from cli.common import console, fail

VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi"}
REMOTE_SCHEMES = ("s3://", "https://", "http://", "data:")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _media_item(source: str, url: str, max_tiles: int | None, frames: int | None) -> dict[str, Any]:
    is_video = Path(source.split("?")[0]).suffix.lower() in VIDEO_SUFFIXES
    item: dict[str, Any] = {"type": "video" if is_video else "image", "url": url}
    if max_tiles is not None:
        item["max_tiles"] = max_tiles
    if is_video and frames is not None:
        item["num_frames"] = frames
    return item


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _running_api(api_url: str) -> bool:
    try:
        return httpx.get(api_url.rstrip("/") + "/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def caption(
    inputs: list[str] = typer.Argument(..., help="Image or video files, or s3:// / https:// URLs. One job each."),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="A prompt; repeat for a multi-round conversation. Default: describe the image/video."),
    max_tiles: int | None = typer.Option(None, "--max-tiles", help="Max 448 px tiles per image (1..40, default 12; video frames default 1)."),
    frames: int | None = typer.Option(None, "--frames", help="Frames sampled per video (1..64, default 8)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Tokens generated per answer (default 512)."),
    model: str | None = typer.Option(None, "--model", help="Checkpoint directory or hub id for an in-process local mode (default CAPTIONQ_MODEL)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per input (input, job_id, status, text, output, error, metrics)."),
    api_url: str = typer.Option("http://127.0.0.1:8000", "--api-url", envvar="CAPTIONQ_API_URL", help="A running captionq (local mode) to use."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CAPTIONQ_API_KEY"),
    timeout: float = typer.Option(3600.0, "--timeout", help="Give up waiting after this many seconds."),
) -> None:
    """Caption or question images and videos; prints the answers."""
    for src in inputs:
        if not src.startswith(REMOTE_SCHEMES) and not Path(src).is_file():
            raise fail(f"{src}: no such file", 2)
    if _running_api(api_url) and model is None:
        items = [_media_item(s, s if s.startswith(REMOTE_SCHEMES) else _data_uri(Path(s)), max_tiles, frames)
                 for s in inputs]
        _run(Api(api_url, api_key), inputs, items, prompt, max_new_tokens, as_json, timeout)
        return
    from cli.local import LocalStack, local_settings
    from cli.models_cmd import ensure_cached

    tmp = Path(tempfile.mkdtemp(prefix="captionq-"))
    try:
        media = tmp / "media"
        media.mkdir()
        items = []
        for i, src in enumerate(inputs):
            if src.startswith(REMOTE_SCHEMES):
                items.append(_media_item(src, src, max_tiles, frames))
                continue
            local = media / f"{i:04d}{Path(src).suffix.lower()}"
            shutil.copyfile(src, local)
            items.append(_media_item(src, local.resolve().as_uri(), max_tiles, frames))
        settings = local_settings(
            port=_free_port(), model=model, auth="disabled", data_dir=tmp / "data",
            database_url=f"sqlite:///{tmp / 'captionq.db'}", media_root=media, broker_url=None,
        )
        ensure_cached(settings.model)  # a hub id not cached yet: downloaded here, with progress
        stack = LocalStack(settings, worker_log=tmp / "worker.log")
        with console.status("starting captionq (local mode)…"):
            try:
                stack.start()
            except (RuntimeError, TimeoutError) as exc:
                log = (tmp / "worker.log").read_text(errors="replace")[-3000:]
                raise fail(f"{exc}\n{log}") from None
        try:
            _run(Api(stack.base_url, None), inputs, items, prompt, max_new_tokens, as_json, timeout)
        finally:
            stack.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(api: Api, inputs: list[str], items: list[dict[str, Any]], prompts: list[str],
         max_new_tokens: int | None, as_json: bool, timeout: float) -> None:
    job_ids = []
    for item in items:
        body: dict[str, Any] = {"media": [item]}
        if prompts:
            body["prompts"] = prompts
        if max_new_tokens is not None:
            body["generation"] = {"max_new_tokens": max_new_tokens}
        job_ids.append(api.request("POST", "/v1/jobs", json=body)["id"])
    failed = False
    for src, job_id in zip(inputs, job_ids, strict=True):
        with console.status(f"{src}: waiting for {job_id}…"):
            job = api.wait_job(job_id, timeout)
        output = job.get("output") or {}
        failed |= job["status"] != "succeeded"
        if as_json:
            typer.echo(json.dumps({"input": src, "job_id": job_id, "status": job["status"],
                                   "text": output.get("text"), "output": job.get("output"),
                                   "error": job.get("error"), "metrics": job.get("metrics")},
                                  ensure_ascii=False))
        elif job["status"] == "succeeded":
            if len(inputs) > 1:
                typer.echo(f"== {src}")
            for rnd in output.get("rounds") or [{"text": output.get("text")}]:
                typer.echo(rnd["text"])
        else:
            err = job.get("error") or {}
            console.print(f"[red]{src}: {job['status']}[/red] {err.get('code')}: {err.get('message')}")
    if failed:
        raise typer.Exit(1)
