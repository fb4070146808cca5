"""``POST /v1/webhook-deliveries/{id}/redeliver``: one fresh attempt of a webhook message, now.

(The list, ``GET /v1/webhook-deliveries?job_id=…|batch_id=…``, is in ``api.routes.ops``.)

Redelivery makes the message ``pending`` and due now, whatever its status (``failed`` after the
receiver was fixed, or ``delivered`` to get it again), in one conditional UPDATE scoped to the
caller's tenant — another tenant's id is 404 like any unknown id. The attempt itself happens on
the worker's ``io`` queue, never here: after the commit this publishes the same wake-up the outbox
would (``deliver_webhook(message_id)``). If that publish fails, nothing is lost: the row says the
message is due, and the sweeper wakes overdue messages up. The message keeps its id, so the
``webhook-id`` header is the same and a receiver that already processed it sees a repeat. If the
message runs out of scheduled retries, this one attempt is all it gets; a failure marks it
``failed`` again.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import sqlalchemy as sa
from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from api.context import get_ctx, tenant
from core.db import utcnow
from core.errors import NotFound
from jobs.outbox import webhook_message
from jobs.tables import WebhookAttempt, WebhookMessage
from jobs.webhooks import PENDING, message_to_dict

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["webhooks"])

Tenant = Annotated[str, Depends(tenant)]


@router.post(
    "/webhook-deliveries/{message_id}/redeliver", status_code=202,
    summary="Send a webhook message again (one fresh attempt, now)",
    responses={202: {"description": "The message, pending, with its attempts so far"},
               404: {"description": "No such message for this tenant"}},
)
async def redeliver(request: Request, message_id: str, tenant_id: Tenant) -> JSONResponse:
    ctx = get_ctx(request)

    def run() -> dict[str, Any]:
        m = WebhookMessage
        with ctx.db.session() as session:
            moved = session.execute(
                sa.update(m).where(m.id == message_id, m.tenant_id == tenant_id)
                .values(status=PENDING, next_attempt_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
            if not moved:
                raise NotFound(f"no webhook message {message_id!r}")
            msg = session.get(m, message_id)
            assert msg is not None
            attempts = list(session.scalars(
                sa.select(WebhookAttempt).where(WebhookAttempt.message_id == message_id)
                .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
            ))
            data = message_to_dict(msg, attempts)
        try:
            ctx.publisher.send(webhook_message(message_id))
        except Exception as exc:  # broker down: the row is due, the sweeper wakes it
            log.warning("redeliver %s: publishing failed, the sweeper will pick it up: %s", message_id, exc)
        return data

    return JSONResponse(await to_thread.run_sync(run), status_code=202)
