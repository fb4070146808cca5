"""``/v1/keys``: a tenant's API keys, for keys with the ``admin`` scope.

List (never a secret), create (the key is shown once) and revoke. A revoked key is refused at
once by the API process that revoked it and by every other within ``auth_cache_seconds``.
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.body import read_json
from api.context import AdminPrincipal, get_ctx
from api.openapi import body_schema
from core.errors import InvalidRequest, NotFound
from jobs.api_keys import key_to_dict, list_keys, parse_scopes, revoke_key
from jobs.tenants import new_key_for

router = APIRouter(prefix="/v1", tags=["keys"])
KEY_ID_CHARS = frozenset("0123456789abcdef")


def _check_key_id(key_id: str) -> None:
    body = key_id[4:]
    if not key_id.startswith("key_") or len(body) != 16 or not set(body) <= KEY_ID_CHARS:
        raise NotFound(f"no API key {key_id!r}")


@router.get("/keys", summary="List the tenant's API keys (admin scope)")
async def get_keys(
    request: Request, who: AdminPrincipal,
    include_revoked: bool = Query(True, description="Also list revoked keys"),
) -> dict[str, Any]:
    ctx = get_ctx(request)

    def run() -> dict[str, Any]:
        with ctx.db.session() as session:
            rows = list_keys(session, who.tenant_id, include_revoked=include_revoked)
            return {"object": "list", "data": [key_to_dict(k) for k in rows]}

    return await to_thread.run_sync(run)  # type: ignore[no-any-return]


@router.post("/keys", status_code=201, summary="Create an API key for the tenant (admin scope)",
             openapi_extra=body_schema("KeyRequest"), responses={201: {"description": "The new key"}})
async def create_key(request: Request, who: AdminPrincipal) -> JSONResponse:
    """Body ``{"scopes": ["submit", "read"], "name": "ci"}`` (both optional; scopes default to
    submit and read). The answer holds ``api_key``: shown this once, only a hash is stored."""
    ctx = get_ctx(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", errors=[{"loc": [], "msg": "an object"}])
    unknown = sorted(set(body) - {"scopes", "name"})
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}",
                             errors=[{"loc": [unknown[0]], "msg": "unknown field"}])
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise InvalidRequest("name must be a string of at most 200 characters",
                             errors=[{"loc": ["name"], "msg": "at most 200 characters"}])
    raw = body.get("scopes")
    if raw is not None and not (isinstance(raw, list) and raw and all(isinstance(s, str) for s in raw)):
        raise InvalidRequest("scopes must be a non-empty list of strings",
                             errors=[{"loc": ["scopes"], "msg": "a non-empty list of strings"}])
    scopes = parse_scopes(raw)

    def run() -> dict[str, Any]:
        with ctx.db.session() as session:
            row, created = new_key_for(session, who.tenant_id, scopes, name)
            data = key_to_dict(row) | {"api_key": created.api_key}
            session.commit()
            return data

    return JSONResponse(await to_thread.run_sync(run), status_code=201)


@router.post("/keys/{key_id}/revoke", summary="Revoke one of the tenant's API keys (admin scope)")
async def revoke(request: Request, key_id: str, who: AdminPrincipal) -> dict[str, Any]:
    ctx = get_ctx(request)
    _check_key_id(key_id)

    def run() -> dict[str, Any]:
        with ctx.db.session() as session:
            data = key_to_dict(revoke_key(session, key_id, who.tenant_id))
            session.commit()
            return data

    data = await to_thread.run_sync(run)
    ctx.auth.forget(key_id)
    return data  # type: ignore[no-any-return]
