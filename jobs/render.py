"""The JSON the API shows for a job or a batch (API.md), also used as webhook payloads.

A ``data:`` URI in a job's request is shown as ``data:<mime>;sha256=<hex>;bytes=<n>`` (the
SHA-256 and size of the decoded media, as OpenAI and Replicate show inline media): the client
sent the bytes and can match them by hash, while every GET, list page, SSE ``done`` and webhook
payload stays small, and webhook messages do not store the media a second time. Only the job's
own ``request`` column holds the full value, for the worker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

from jobs.tables import Batch, Job


def rfc3339(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def job_to_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "job",
        "status": job.status,
        "batch_id": job.batch_id,
        "custom_id": job.custom_id,
        "request": display_request(job.request),
        "output": job.output,
        "partial_text": job.partial_text if job.status == "running" else None,
        "error": job.error,
        "attempts": job.attempts,
        "metrics": job.metrics,
        "metadata": job.meta if job.meta is not None else {},
        "priority": job.priority,
        "model": job.model,
        "model_revision": job.model_revision,
        "cancel_requested": bool(job.cancel_requested),
        "created_at": rfc3339(job.created_at),
        "started_at": rfc3339(job.started_at),
        "finished_at": rfc3339(job.finished_at),
        "expires_at": rfc3339(job.expires_at),
    }


def batch_counts(batch: Batch) -> dict[str, int]:
    return {
        "total": batch.total, "queued": batch.queued, "running": batch.running,
        "succeeded": batch.succeeded, "failed": batch.failed, "canceled": batch.canceled,
    }


def batch_to_dict(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "object": "batch",
        "status": batch.status,
        "counts": batch_counts(batch),
        "output_url": batch.output_url,
        "metadata": batch.meta if batch.meta is not None else {},
        "webhook": ({"url": batch.webhook_url, "events": batch.webhook_events}
                    if batch.webhook_url else None),
        "created_at": rfc3339(batch.created_at),
        "finished_at": rfc3339(batch.finished_at),
        "cancel_requested_at": rfc3339(batch.cancel_requested_at),
        # bulk batches (null when unused)
        "source": batch.source,
        "output_formats": batch.output_formats,
        "expires_at": rfc3339(batch.expires_at),
        "expired_at": rfc3339(batch.expired_at),
        "resume_from": batch.resume_from,
    }


def result_line(row: Any) -> dict[str, Any]:
    """One line of a batch's results (``GET /v1/batches/{id}/results``, ``results.jsonl``)."""
    return {
        "job_id": row.id, "custom_id": row.custom_id, "status": row.status,
        "output": row.output, "error": row.error,
        "metadata": row.meta if row.meta is not None else {},
    }


def short_data_uri(url: str) -> str:
    """``data:<mime>;sha256=<hex>;bytes=<n>`` for a ``data:`` URI (anything else unchanged)."""
    if not url.startswith("data:") or "," not in url:
        return url
    header, _, payload = url[5:].partition(",")
    params = header.split(";")
    mime = params[0] or "text/plain"
    try:
        data = (base64.b64decode(payload, validate=False) if "base64" in params[1:]
                else unquote_to_bytes(payload))
    except (binascii.Error, ValueError):
        data = payload.encode("utf-8", "surrogatepass")
    return f"data:{mime};sha256={hashlib.sha256(data).hexdigest()};bytes={len(data)}"


def display_request(request: Any) -> Any:
    """The stored request as shown: media ``data:`` URIs shortened."""
    if not isinstance(request, dict) or not isinstance(request.get("media"), list):
        return request
    if not any(isinstance(m, dict) and str(m.get("url", "")).startswith("data:") for m in request["media"]):
        return request
    media = [{**m, "url": short_data_uri(m["url"])} if isinstance(m, dict) and isinstance(m.get("url"), str)
             else m for m in request["media"]]
    return {**request, "media": media}
