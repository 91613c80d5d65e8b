"""What every request passes before routing: its token and role, its path, its size.

An ASGI middleware rather than a route dependency, because FastAPI reads and parses a
body before it resolves dependencies: an anonymous malformed body got 400/422, not 401,
and a body of any size was read into memory. Here the token is checked first, then the
path, then the body is read up to `max_body_bytes` and handed on.

Roles: an `admin` token may do everything, a `read` token only GET and HEAD (403
otherwise, on every route, known or not). The order of checks never reveals more to a
caller than its token allows: without one, every route but the public ones is 401.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.operations.models import ErrorDetail, ErrorResponse

HOW_TO_AUTHENTICATE = (
    "send the header `Authorization: Bearer <token>` with one of the tokens "
    "configured in PIPELINE_ADMIN_API_TOKENS (role admin) or "
    "PIPELINE_ADMIN_API_READ_TOKENS (role read)"
)
READ_METHODS = frozenset({"GET", "HEAD"})
# C0 controls and DEL: no id, name or key the API knows contains one, and routing
# would silently drop a trailing newline (`$` matches before it).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Role(Enum):
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Tokens:
    """The accepted tokens and the role of each."""

    admin: tuple[bytes, ...]
    read: tuple[bytes, ...] = ()

    def role_of(self, presented: bytes) -> Role | None:
        # Compare against every token, without stopping early, so timing reveals nothing.
        admin = _any_equal(presented, self.admin)
        read = _any_equal(presented, self.read)
        if admin:
            return Role.ADMIN
        return Role.READ if read else None


def _any_equal(presented: bytes, accepted: Iterable[bytes]) -> bool:
    matched = False
    for token in accepted:
        matched |= hmac.compare_digest(presented, token)
    return matched


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: Tokens,
        public_paths: frozenset[str],
        max_body_bytes: int,
    ) -> None:
        self._app = app
        self._tokens = tokens
        self._public = public_paths
        self._max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self._max_body:
            await _too_large(declared, self._max_body)(scope, receive, send)
            return
        body, more = await _read_body(receive, self._max_body)
        if more:
            await _too_large(None, self._max_body)(scope, receive, send)
            return
        await self._app(scope, _replay(body, receive), send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path not in self._public:
            presented = _bearer_token(scope)
            if presented is None:
                return error(
                    401,
                    "unauthorized",
                    f"missing bearer token: {HOW_TO_AUTHENTICATE}",
                    {"WWW-Authenticate": "Bearer"},
                )
            role = self._tokens.role_of(presented)
            if role is None:
                return error(
                    401,
                    "unauthorized",
                    f"bearer token not accepted: {HOW_TO_AUTHENTICATE}",
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            if role is Role.READ and method not in READ_METHODS:
                return error(
                    403,
                    "forbidden",
                    f"{method} {_shown(path)} changes state and needs a token with role "
                    "admin; this token has role read, which may only GET",
                )
        control = _CONTROL.search(path)
        if control is not None:
            return error(
                400,
                "invalid_path",
                f"the path has the control character %{ord(control.group()):02X} at "
                f"position {control.start()}: no id or name contains one; remove it",
            )
        return None


def error(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(type=error_type, message=message))
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers
    )


def _too_large(declared: int | None, limit: int) -> JSONResponse:
    size = "more" if declared is None else f"{declared} bytes,"
    return error(
        413,
        "too_large",
        f"the request body is {size} over the limit of {limit} bytes "
        "(PIPELINE_ADMIN_API_MAX_BODY_BYTES): send less, e.g. fewer rules at once",
    )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


def _bearer_token(scope: Scope) -> bytes | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # the server refuses a malformed length before we see it


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The body, and True when it went past `limit` (then it is not read to its end)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _shown(path: str) -> str:
    return path if len(path) <= 100 else path[:100] + "..."
