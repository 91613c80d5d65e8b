"""The OpenAPI document as the API behaves: every error in our shape, every status that
the guard or the routes can answer documented on the operations that can answer it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from admin_api.guard import READ_METHODS

_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
_WHY = {
    "400": "Malformed request: a body that is no JSON, a control character in the path.",
    "401": "Missing or unknown bearer token.",
    "403": "The token has role read; this operation needs role admin.",
    "413": "The body, or what it would write to Kafka, is larger than allowed.",
    "422": "A value is invalid: the message and `fields` say which and why.",
}


def install(app: FastAPI, public_paths: frozenset[str]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _document_errors(schema, public_paths)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_errors(schema: dict[str, Any], public_paths: frozenset[str]) -> None:
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            statuses = ["400"]
            if path not in public_paths:
                statuses.append("401")
                if method.upper() not in READ_METHODS:
                    statuses.append("403")
            if "requestBody" in operation:
                statuses.append("413")
            if "422" in responses or operation.get("parameters") or "requestBody" in operation:
                statuses.append("422")
            for status in statuses:
                documented = responses.setdefault(status, {"description": _WHY[status]})
                documented["content"] = {"application/json": {"schema": _ERROR}}
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
