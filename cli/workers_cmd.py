"""``captionq workers``: the GPU worker fleet (``GET /v1/workers``) as a table — slots, KV budget,
tokens/s and batch occupancy over each worker's last heartbeat interval."""

from __future__ import annotations

import json
from typing import Any

import typer

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
