"""``captionq workers``: the GPU worker fleet (``GET /v1/workers``) as a table — slots, KV budget,
tokens/s and batch occupancy over each worker's last heartbeat interval; ``captionq status``: the
same fleet and the queues (``GET /v1/queues``: depth, waiting work, oldest age), or, given an id,
one job or batch as in v1."""

from __future__ import annotations

import json
from typing import Any

import typer

from cli import client
from cli.client import API_KEY, API_URL, Api

COLUMNS = ("ID", "STATUS", "MODEL", "SLOTS", "KV BUDGET", "TOKENS/S", "OCCUPANCY", "BUSY", "RUNNING",
           "LAST HEARTBEAT")


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(body: dict[str, Any]) -> str:
    """The fleet as aligned text columns and a totals line (``-``: not reported yet)."""
    rows = [COLUMNS] + [(
        w["id"], w["status"], w.get("model") or "-", _num(w.get("slots"), "d"),
        _num(w.get("kv_budget_tokens"), "d"), _num(w.get("tokens_per_s"), ".1f"),
        _num(w.get("batch_occupancy"), ".0%"), _num(w.get("busy_fraction"), ".0%"),
        str(w.get("running_jobs", 0)), w["last_heartbeat_at"]) for w in body["data"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    t = body["totals"]
    lines.append(f"{t['live_workers']} live worker(s): {t['slots']} slots, {t['kv_budget_tokens']} KV tokens, "
                 f"{t['tokens_per_s']:.1f} tokens/s, {t['running_jobs']} running job(s)")
    return "\n".join(lines)


def workers(
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON instead of a table."),
    api_url: str = API_URL,
    api_key: str | None = API_KEY,
) -> None:
    """GPU workers: slots, KV budget, tokens/s and batch occupancy (live and dead)."""
    body = Api(api_url, api_key).request("GET", "/v1/workers")
    typer.echo(json.dumps(body, ensure_ascii=False, indent=2) if as_json else table(body))


QUEUE_COLUMNS = ("QUEUE", "BROKER MESSAGES", "WAITING", "OLDEST")


def _age(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def queue_table(body: dict[str, Any]) -> str:
    """The queues as aligned columns (``-``: the broker cannot say / nothing waits)."""
    rows = [QUEUE_COLUMNS] + [(
        q["name"], _num(q.get("messages"), "d"), str(q["waiting"]), _age(float(q["oldest_age_seconds"])))
        for q in body["data"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(QUEUE_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows)


def status(
    resource_id: str | None = typer.Argument(None, help="job_… or bat_… id: print that job or batch "
                                                         "as the API returns it (without one: the fleet)"),
    as_json: bool = typer.Option(False, "--json", help="Print {workers, queues} as JSON instead of tables."),
    api_url: str = API_URL,
    api_key: str | None = API_KEY,
) -> None:
    """A job or a batch, given its id; without one, the fleet at a glance: GPU workers (slots,
    tokens/s, occupancy, running jobs) and the queues (messages in the broker, waiting jobs, the
    oldest one's age)."""
    if resource_id is not None:  # v1's `captionq status ID`
        client.status(resource_id, api_url, api_key)
        return
    api = Api(api_url, api_key)
    fleet = api.request("GET", "/v1/workers")
    queues = api.request("GET", "/v1/queues")
    if as_json:
        typer.echo(json.dumps({"workers": fleet, "queues": queues}, ensure_ascii=False, indent=2))
        return
    typer.echo(f"{table(fleet)}\n\n{queue_table(queues)}")
