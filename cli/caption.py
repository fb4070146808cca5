"""``captionq caption FILE_OR_URL…``: the one-shot form of the service.

It submits one job per input to a running captionq (``--api-url``), or, without one, starts the
local mode in-process in a temporary folder (SQLite, filesystem broker, a real worker process),
shows each job's state while it waits and prints the answers. The job runs exactly as in
production. A worker that cannot start (say, a model that does not load) ends the command at
once with the worker's own one-line reason.
"""

from __future__ import annotations

import base64
import mimetypes
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer

from cli.client import Api, api_or_exit
from cli.common import console, fail
from cli.follow import print_outcomes, wait_all
from storage.url_syntax import scheme_of

VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi"}
REMOTE_SCHEMES = ("s3", "https", "http", "data")
DEFAULT_API_URL = "http://127.0.0.1:8000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _is_remote(source: str) -> bool:
    return scheme_of(source) in REMOTE_SCHEMES


def check_input(source: str) -> None:
    """A missing file or a URL scheme the API would refuse: one line, exit 2, before anything
    starts. The wording follows the API's own (``url_not_allowed``)."""
    scheme = scheme_of(source)
    if len(scheme) > 1 and scheme not in REMOTE_SCHEMES:  # one letter: a Windows drive, a file
        raise fail(f"{source}: unsupported URL scheme {scheme!r}; accepted: s3://, https://, "
                   "http://, data: or a local file", 2)
    if not _is_remote(source) and not Path(source).is_file():
        raise fail(f"{source}: no such file", 2)


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


def _answers(api_url: str) -> bool:
    try:
        return httpx.get(api_url.rstrip("/") + "/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def caption(
    inputs: list[str] = typer.Argument(..., help="Image or video files, or s3:// / https:// / data: URLs. One job each."),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="A prompt; repeat for a multi-round conversation. Default: describe the image/video."),
    max_tiles: int | None = typer.Option(None, "--max-tiles", help="Max 448 px tiles per image (1..40, default 12; video frames default 1)."),
    num_frames: int | None = typer.Option(None, "--num-frames", "--frames", help="Frames sampled per video (1..64, default 8); the API's num_frames."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Tokens generated per answer (default 512)."),
    model: str | None = typer.Option(None, "--model", help="Checkpoint directory or hub id for an in-process local mode (default CAPTIONQ_MODEL)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per input (input, job_id, status, text, output, error, metrics)."),
    api_url: str | None = typer.Option(None, "--api-url", envvar="CAPTIONQ_API_URL", help=f"A running captionq to use; it must answer. Without it: {DEFAULT_API_URL} if it answers, else an in-process local mode."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CAPTIONQ_API_KEY"),
    timeout: float = typer.Option(3600.0, "--timeout", help="Give up waiting after this many seconds (exit 3)."),
) -> None:
    """Caption or question images and videos; prints the answers (job states on stderr)."""
    for src in inputs:
        check_input(src)
    if api_url is not None and model is not None:
        raise fail("--model starts an in-process local mode; it cannot be combined with --api-url", 2)
    if api_url is None and model is None and _answers(DEFAULT_API_URL):
        api_url = DEFAULT_API_URL
    if api_url is not None:
        api = api_or_exit(api_url, api_key)
        items = [_media_item(s, s if _is_remote(s) else _data_uri(Path(s)), max_tiles, num_frames)
                 for s in inputs]
        _run(api, inputs, items, prompt, max_new_tokens, as_json, timeout, check=None)
        return
    _run_in_process(inputs, prompt, max_tiles, num_frames, max_new_tokens, model, as_json, timeout)


def _run_in_process(inputs: list[str], prompt: list[str], max_tiles: int | None, frames: int | None,
                    max_new_tokens: int | None, model: str | None, as_json: bool, timeout: float) -> None:
    from cli.local import LocalStack, WorkerFailed, local_settings
    from cli.models_cmd import ensure_cached

    tmp = Path(tempfile.mkdtemp(prefix="captionq-"))
    try:
        media = tmp / "media"
        media.mkdir()
        items = []
        for i, src in enumerate(inputs):
            if _is_remote(src):
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
        try:
            with console.status("starting captionq (local mode)…"):
                stack.start()
            _run(Api(stack.base_url, None), inputs, items, prompt, max_new_tokens, as_json, timeout,
                 check=stack.check_worker)
        except WorkerFailed as exc:
            # The worker's own line (it already starts with "error:"), e.g. a model that does not load.
            console.print(exc.line, markup=False, highlight=False)
            raise typer.Exit(2 if exc.exit_code == 2 else 1) from None
        except TimeoutError as exc:
            raise fail(str(exc)) from None
        finally:
            stack.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(api: Api, inputs: list[str], items: list[dict[str, Any]], prompts: list[str],
         max_new_tokens: int | None, as_json: bool, timeout: float,
         check: Callable[[], None] | None) -> None:
    job_ids = []
    for item in items:
        body: dict[str, Any] = {"media": [item]}
        if prompts:
            body["prompts"] = prompts
        if max_new_tokens is not None:
            body["generation"] = {"max_new_tokens": max_new_tokens}
        job_ids.append(api.request("POST", "/v1/jobs", json=body)["id"])
    jobs = wait_all(api, inputs, job_ids, timeout, check)
    if print_outcomes(inputs, jobs, as_json):
        raise typer.Exit(1)
