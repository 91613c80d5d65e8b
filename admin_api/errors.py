"""How errors leave the Admin API: one shape, `{"error": {"type", "message", "fields"?}}`,
where the message says what to change and never echoes more than a glimpse of the input
or names a Python type."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

from admin_api.guard import error
from pipeline.errors import (
    ConflictError,
    NotFoundError,
    PipelineError,
    RetryableError,
    TooLarge,
    ValidationError,
)
from pipeline.operations.models import ErrorDetail, ErrorResponse, FieldError

log = logging.getLogger(__name__)

# Most specific first: NotFoundError, ConflictError and TooLarge are ValidationErrors too.
_ERROR_STATUS: tuple[tuple[type[PipelineError], int, str], ...] = (
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (TooLarge, 413, "too_large"),
    (ValidationError, 422, "invalid"),
    (RetryableError, 503, "unavailable"),
    (PipelineError, 500, "internal"),
)

_GLIMPSE = 80
_PARAMETER = re.compile(r"{[^}]*}")
# What pydantic's messages may carry that means nothing to a user of the API.
_PYTHON_TYPE = re.compile(r"<class '([A-Za-z_.]+)'>")
_PYTHON_NAMES = {"int": "an integer", "str": "a string", "float": "a number", "bool": "a boolean"}


def install(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Render every error in our shape; `routes` are every route, for 405's `Allow`."""

    async def render_http_error(request: Request, exc: Exception) -> JSONResponse:
        return _render_http_error(request, exc, routes)

    app.add_exception_handler(PipelineError, _render_pipeline_error)
    app.add_exception_handler(RequestValidationError, _render_request_validation_error)
    app.add_exception_handler(HTTPException, render_http_error)
    app.add_exception_handler(Exception, _render_unexpected_error)


def glimpse(text: str) -> str:
    """At most a few dozen characters of something the caller sent."""
    return text if len(text) <= _GLIMPSE else f"{text[:_GLIMPSE]}... ({len(text)} characters)"


def _error_json(
    status: int,
    error_type: str,
    message: str,
    *,
    fields: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    if fields is None:
        return error(status, error_type, message, headers)
    body = ErrorResponse(error=ErrorDetail(type=error_type, message=message, fields=fields))
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers
    )


async def _render_pipeline_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PipelineError)
    status, error_type = next(
        (status, name) for kind, status, name in _ERROR_STATUS if isinstance(exc, kind)
    )
    if status >= 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    headers = None
    if isinstance(exc, RetryableError) and exc.retry_after_ms is not None:
        headers = {"Retry-After": str(math.ceil(exc.retry_after_ms / 1000))}
    return _error_json(status, error_type, str(exc), headers=headers)


async def _render_request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [_field_error(e) for e in exc.errors()]
    listed = "; ".join(f"{field.path}: {field.message}" for field in fields[:10])
    more = f" (and {len(fields) - 10} more)" if len(fields) > 10 else ""
    return _error_json(
        422, "invalid_request", f"invalid request, fix these fields: {listed}{more}", fields=fields
    )


def _field_error(detail: Any) -> FieldError:
    path = ".".join(glimpse(str(part)) for part in detail["loc"])
    message = _PYTHON_TYPE.sub(
        lambda m: _PYTHON_NAMES.get(m.group(1), m.group(1)), glimpse(str(detail["msg"]))
    )
    return FieldError(path=path, message=message)


def _render_http_error(
    request: Request, exc: Exception, routes: Sequence[BaseRoute]
) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    status = HTTPStatus(exc.status_code)
    message = str(exc.detail)
    headers = dict(exc.headers or {})
    path = glimpse(request.url.path)
    if status is HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = _allowed_methods(request, routes)
        headers["Allow"] = ", ".join(allowed)
        message = f"{request.method} is not allowed on {path}: use {' or '.join(allowed)}"
    elif message == status.phrase and status is HTTPStatus.NOT_FOUND:
        # Starlette's own routing errors carry only the status phrase; say what to do.
        message = f"{request.method} {path} is not a route of this API: the routes are at /docs"
    error_type = status.phrase.lower().replace(" ", "_").replace("-", "_")
    return _error_json(exc.status_code, error_type, message, headers=headers or None)


def _allowed_methods(request: Request, routes: Sequence[BaseRoute]) -> list[str]:
    """The methods of the path the request names: of every route whose path matches,
    the most specific (most literal characters). Routing stops at the first route whose
    path matches, so its own `Allow` misses the others'; and `/invocations/{id:path}`
    matches `/invocations/x/resume` too, which is the resume route's path."""
    matched: list[tuple[int, set[str]]] = []
    for route in routes:
        match, _ = route.matches(request.scope)
        methods = getattr(route, "methods", None)
        if match is not Match.NONE and methods:
            literal = len(_PARAMETER.sub("", getattr(route, "path_format", "")))
            matched.append((literal, set(methods)))
    if not matched:
        return []
    most = max(literal for literal, _ in matched)
    return sorted(set().union(*(methods for literal, methods in matched if literal == most)))


async def _render_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error_json(500, "internal", "unexpected server error: the server log has the details")
