"""Client commands against a running API: ``submit``, ``status``, ``wait``, ``results``, ``cancel``.

Everything goes over the public HTTP API (docs/API.md), so these work against any
deployment: ``--api-url`` / ``CAPTIONQ_API_URL`` and ``--api-key`` / ``CAPTIONQ_API_KEY``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.common import console, fail

API_URL = typer.Option("http://127.0.0.1:8000", "--api-url", envvar="CAPTIONQ_API_URL", help="captionq API base URL.")
API_KEY = typer.Option(None, "--api-key", envvar="CAPTIONQ_API_KEY", help="API key (Bearer).")
TERMINAL_JOB = {"succeeded", "failed", "canceled"}
TERMINAL_BATCH = {"completed", "canceled", "expired"}


class Api:
    """A thin httpx wrapper that turns problem details into one readable error line."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 90.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise unreachable(str(self.http.base_url), exc) from None
        if resp.status_code >= 400:
            # A 4xx is the caller's mistake (exit 2), a 5xx the service's (exit 1).
            raise fail(f"HTTP {resp.status_code} {problem_line(resp)}", 2 if resp.status_code < 500 else 1)
        if resp.headers.get("content-type", "").startswith("application/json"):
            return resp.json()
        return resp.text

    def get_job(self, job_id: str, wait: float = 0) -> dict[str, Any]:
        params = {"wait": int(wait)} if wait else None
        return self.request("GET", f"/v1/jobs/{job_id}", params=params)  # type: ignore[no-any-return]

    def wait_job(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
            job = self.get_job(job_id, wait=max(1, int(left)))
            if job["status"] in TERMINAL_JOB or (deadline is not None and time.monotonic() >= deadline):
                return job


def unreachable(base_url: str, exc: BaseException) -> typer.Exit:
    """A server that does not answer: one line, exit 2 (a wrong --api-url, or nothing started)."""
    reason = "connection refused" if isinstance(exc, httpx.ConnectError) else (str(exc) or type(exc).__name__)
    return fail(f"cannot reach captionq at {base_url.rstrip('/')}: {reason}", 2)


def problem_line(resp: httpx.Response) -> str:
    """An RFC 9457 problem as one line: ``code: detail (field: message; …)``."""
    try:
        problem = resp.json()
        line = f"{problem.get('code')}: {problem.get('detail') or problem.get('title')}"
        fields = [f"{'.'.join(str(p) for p in err.get('loc', []))}: {err.get('msg')}"
                  for err in problem.get("errors", [])[:5]]
    except (ValueError, AttributeError):
        return " ".join(resp.text[:300].split())
    return line + (f" ({'; '.join(fields)})" if fields else "")


def api_or_exit(base_url: str, api_key: str | None) -> Api:
    """An :class:`Api` for a server that answers now; else one line and exit 2, never a fallback."""
    api = Api(base_url, api_key)
    try:
        api.http.get("/healthz", timeout=5.0)
    except httpx.HTTPError as exc:
        raise unreachable(base_url, exc) from None
    return api


def read_body(request_file: str) -> Any:
    """The JSON in ``request_file`` (``-``: stdin); a missing or unreadable file is one line, exit 2."""
    try:
        text = sys.stdin.read() if request_file == "-" else Path(request_file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail(f"{request_file}: no such file", 2) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"{request_file}: cannot read: {exc}", 2) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise fail(f"{request_file}: not JSON: {exc}", 2) from None


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2))


def _kind(resource_id: str) -> str:
    if resource_id.startswith("bat_"):
        return "batches"
    if resource_id.startswith("job_"):
        return "jobs"
    raise fail(f"{resource_id!r} is neither a job_… nor a bat_… id", 2)


def submit(
    request_file: str = typer.Argument(..., help="JSON file with a JobRequest, or a batch body ({\"jobs\": […]} or {\"manifest_url\": …}); - reads stdin."),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key", help="Idempotency-Key header."),
    api_url: str = API_URL,
    api_key: str | None = API_KEY,
) -> None:
    """Submit a job or a batch and print it (status 202 → queued)."""
    body = read_body(request_file)
    is_batch = isinstance(body, dict) and ("jobs" in body or "manifest_url" in body or "source" in body)
    path = "/v1/batches" if is_batch else "/v1/jobs"
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    _print(Api(api_url, api_key).request("POST", path, json=body, headers=headers))


def status(
    resource_id: str = typer.Argument(..., help="job_… or bat_… id"),
    api_url: str = API_URL,
    api_key: str | None = API_KEY,
) -> None:
    """Print a job or a batch as the API returns it."""
    _print(Api(api_url, api_key).request("GET", f"/v1/{_kind(resource_id)}/{resource_id}"))


def wait(
    resource_id: str = typer.Argument(..., help="job_… or bat_… id"),
    timeout: float | None = typer.Option(None, "--timeout", help="Give up after this many seconds (exit 3)."),
    api_url: str = API_URL,
    api_key: str | None = API_KEY,
) -> None:
    """Wait until a job or batch finishes (a progress bar for batches), then print it."""
    api = Api(api_url, api_key)
    if _kind(resource_id) == "jobs":
        with console.status(f"waiting for {resource_id}…"):
            job = api.wait_job(resource_id, timeout)
        _print(job)
        if job["status"] not in TERMINAL_JOB:
            raise fail(f"{resource_id}: still {job['status']} after {timeout:g} s (--timeout)", 3)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(resource_id, total=None)
        while True:
            batch = api.request("GET", f"/v1/batches/{resource_id}")
            counts = batch["counts"]
            done = counts["succeeded"] + counts["failed"] + counts["canceled"]
            progress.update(task, total=counts["total"], completed=done,
                            description=f"{resource_id} {batch['status']} (failed {counts['failed']})")
            if batch["status"] in TERMINAL_BATCH:
                break
            if deadline is not None and time.monotonic() >= deadline:
                _print(batch)
                raise fail(f"{resource_id}: still {batch['status']} after {timeout:g} s (--timeout)", 3)
            time.sleep(1.0)
    _print(batch)


def results(
    resource_id: str = typer.Argument(..., help="job_… or bat_… id"),
    api_url: str = API_URL,
    api_key: str | None = API_KEY,
) -> None:
    """A job's output, or a batch's results as NDJSON (streamed, submission order)."""
    api = Api(api_url, api_key)
    if _kind(resource_id) == "jobs":
        job = api.get_job(resource_id)
        _print({"status": job["status"], "output": job.get("output"), "error": job.get("error")})
        return
    try:
        with api.http.stream("GET", f"/v1/batches/{resource_id}/results") as resp:
            if resp.status_code >= 400:
                resp.read()
                raise fail(f"HTTP {resp.status_code} {problem_line(resp)}", 2 if resp.status_code < 500 else 1)
            for line in resp.iter_lines():
                if line:
                    typer.echo(line)
    except httpx.HTTPError as exc:
        raise unreachable(str(api.http.base_url), exc) from None


def cancel(
    resource_id: str = typer.Argument(..., help="job_… or bat_… id"),
    api_url: str = API_URL,
    api_key: str | None = API_KEY,
) -> None:
    """Cancel a job (at its next generation step if running) or every unfinished job of a batch."""
    _print(Api(api_url, api_key).request("POST", f"/v1/{_kind(resource_id)}/{resource_id}/cancel"))


COMMANDS: dict[str, Callable[..., None]] = {"submit": submit, "status": status, "wait": wait, "results": results, "cancel": cancel}
