"""Follow jobs to their end for ``captionq caption``: each job's Server-Sent Events stream
(``status``, ``token``, ``done``) is read on a thread while the caller's thread shows the state on
stderr (queued, running, the text as it streams), checks the local worker is still alive and
keeps the deadline. A stream that ends without ``done`` falls back to long-polling the job."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer

from cli.client import TERMINAL_JOB, Api
from cli.common import console, fail

Event = tuple[str, Any]
TAIL_CHARS = 40


def _read_events(api: Api, job_id: str, out: queue.Queue[Event]) -> None:
    """Put ``(event, data)`` pairs on ``out``; ``("end", None)`` when the stream is over."""
    try:
        with api.http.stream("GET", f"/v1/jobs/{job_id}/events",
                             timeout=httpx.Timeout(10.0, read=None)) as resp:
            if resp.status_code < 400:
                event = None
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event:
                        out.put((event, json.loads(line[5:])))
                    elif not line:
                        event = None
    except (httpx.HTTPError, ValueError):
        pass  # the caller falls back to polling
    out.put(("end", None))


class _Display:
    """One status line per job: its state, and while it runs the latest generated text."""

    def __init__(self, source: str, job_id: str) -> None:
        self.source, self.job_id = source, job_id
        self.state, self.text, self.round = "queued", "", 0  # as accepted (202)

    def apply(self, event: str, data: Any) -> None:
        if event == "status":
            self.state = str(data.get("status"))
        elif event == "token":
            if data.get("round", 0) != self.round:
                self.round, self.text = data.get("round", 0), ""
            self.state = "running"
            self.text += str(data.get("text", ""))

    def line(self) -> str:
        """Short enough for a terminal line: the file's name, not its path; once text streams,
        its latest characters instead of the job id."""
        name = self.source if "://" in self.source or self.source.startswith("data:") else Path(self.source).name
        head = f"{name[:40]}: {self.state}"
        if self.text:
            tail = " ".join(self.text.split())[-TAIL_CHARS:]
            return f"{head}, {len(self.text)} chars: …{tail}"
        return f"{head} ({self.job_id})"


def _timed_out(display: _Display, timeout: float) -> typer.Exit:
    return fail(f"timed out after {timeout:g} s (--timeout): {display.source} is still "
                f"{display.state} (job {display.job_id})", 3)


def follow(api: Api, source: str, job_id: str, deadline: float, timeout: float,
           check: Callable[[], None] | None) -> dict[str, Any]:
    """The job's final JSON. Exit 3 with one line at the deadline; ``check`` raises to stop
    (the local worker has died)."""
    display = _Display(source, job_id)
    events: queue.Queue[Event] = queue.Queue()
    threading.Thread(target=_read_events, args=(api, job_id, events), daemon=True,
                     name=f"captionq-events-{job_id}").start()
    with console.status(display.line()) as status:
        while True:
            if check is not None:
                check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timed_out(display, timeout)
            try:
                event, data = events.get(timeout=min(0.5, left))
            except queue.Empty:
                continue
            if event == "done":
                return data  # type: ignore[no-any-return]
            if event == "end":
                break
            display.apply(event, data)
            status.update(display.line())
        # No stream (or it broke off): long-poll in short steps, still supervised.
        while True:
            if check is not None:
                check()
            left = deadline - time.monotonic()
            job = api.get_job(job_id, wait=max(1.0, min(2.0, left)))
            display.state = job["status"]
            status.update(display.line())
            if job["status"] in TERMINAL_JOB:
                return job  # type: ignore[no-any-return]
            if time.monotonic() >= deadline:
                raise _timed_out(display, timeout)


def wait_all(api: Api, sources: list[str], job_ids: list[str], timeout: float,
             check: Callable[[], None] | None) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return [follow(api, src, job_id, deadline, timeout, check)
            for src, job_id in zip(sources, job_ids, strict=True)]


def print_outcomes(sources: list[str], jobs: list[dict[str, Any]], as_json: bool) -> bool:
    """Answers on stdout, failures as one line each on stderr; True if any job did not succeed."""
    failed = False
    for src, job in zip(sources, jobs, strict=True):
        output = job.get("output") or {}
        failed |= job["status"] != "succeeded"
        if as_json:
            typer.echo(json.dumps({"input": src, "job_id": job["id"], "status": job["status"],
                                   "text": output.get("text"), "output": job.get("output"),
                                   "error": job.get("error"), "metrics": job.get("metrics")},
                                  ensure_ascii=False))
        elif job["status"] == "succeeded":
            if len(sources) > 1:
                typer.echo(f"== {src}")
            for rnd in output.get("rounds") or [{"text": output.get("text")}]:
                typer.echo(rnd["text"])
        else:
            err = job.get("error") or {}
            console.print(f"[red]error:[/red] {src}: {job['status']}: {err.get('code')}: "
                          f"{err.get('message')}", highlight=False)
    return failed
