"""OpenAPI for bodies the routes parse themselves (to enforce size and nesting limits first):
the pydantic schemas are added to ``components/schemas`` and referenced from each route."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from jobs.batches import BatchRequest
from jobs.requests import JobRequest

REF = "#/components/schemas/{model}"
MODELS: dict[str, type[BaseModel]] = {"JobRequest": JobRequest, "BatchRequest": BatchRequest}


def body_schema(name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": REF.format(model=name)}}}}}


def install(app: FastAPI) -> None:
    def custom() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, model in MODELS.items():
            s = model.model_json_schema(ref_template=REF)
            for def_name, d in s.pop("$defs", {}).items():
                comps.setdefault(def_name, d)
            comps[name] = s
        app.openapi_schema = schema
        return schema

    app.openapi = custom  # type: ignore[method-assign]
