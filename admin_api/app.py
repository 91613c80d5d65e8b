"""The Admin API application factory: routes, bearer-token auth and error rendering.

Every error leaves the API in one shape, `{"error": {"type", "message"}}`, where the
message says what to change; pipeline errors map to HTTP statuses in `_ERROR_STATUS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query
from fastapi.security import HTTPBearer
from pydantic import SecretStr

from admin_api import contract, errors
from admin_api.guard import HOW_TO_AUTHENTICATE, RequestGuard, Tokens
from pipeline.core.introspection import (
    DEFAULT_SCOPE,
)
from pipeline.core.lifecycle import InvocationStatus
from pipeline.errors import (
    ValidationError,
)
from pipeline.operations import patterns
from pipeline.operations.models import (
    DeploymentLimitPut,
    DeploymentListResponse,
    DeploymentResponse,
    ErrorResponse,
    HealthResponse,
    InvocationListResponse,
    InvocationResponse,
    LimitRuleSetResponse,
    LimitRulesPut,
    QueueListResponse,
    QueueResponse,
    ResumeResponse,
    ServiceListResponse,
    ServiceResponse,
)
from pipeline.operations.operations import Operations
from pipeline.operations.patterns import documented
from pipeline.operations.ports import (
    InvocationCommands,
    InvocationReader,
    LimitRules,
    ServiceReader,
)
from pipeline.runtime.clock import wall_clock_ms
from pipeline.settings import Settings
from pipeline.views.invocation_index import (
    DEFAULT_PAGE,
    MAX_PAGE,
)

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Inspect what pipeline runs: invocations with their journal and last error, the virtual
queues they wait in and what holds each back, and the services that worker deployments
announce. Resume invocations that paused after their
last retry. Change the limit rules of virtual queues and the caps of worker pools
(deployments) while everything runs.

Every route except `/health` (and the documentation, unless `PIPELINE_ADMIN_API_DOCS`
says otherwise) needs a bearer token, sent as `Authorization: Bearer <token>`: one of
`PIPELINE_ADMIN_API_TOKENS` (role admin: may change everything) or of
`PIPELINE_ADMIN_API_READ_TOKENS` (role read: GET only, any change is 403).
"""

# Stateless and immutable; module level so that FastAPI can resolve the annotation.
# auto_error=False so that a missing token gets our message and status, not FastAPI's.
_BEARER_SCHEME = HTTPBearer(auto_error=False, description=HOW_TO_AUTHENTICATE)

_AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse, "description": "Missing or unknown bearer token."},
}

_MAX_INVOCATION_ID = 1024
_MAX_SERVICE_NAME = 128
_MAX_SCOPE_SEGMENT = 64

_DeploymentName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=_MAX_SERVICE_NAME,
        description="The deployment: the name of the service its workers serve.",
        json_schema_extra=documented(patterns.NAME),
    ),
]

# Module level, like the bearer scheme, so that FastAPI can resolve the annotation.
# `:path` in the routes because derived ids contain slashes (`idem:Service/handler:key`).
_InvocationId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=_MAX_INVOCATION_ID,
        description="The id returned when the invocation was submitted.",
        json_schema_extra=documented(patterns.PRINTABLE),
    ),
]


def create_app(
    settings: Settings,
    *,
    invocations: InvocationReader,
    services: ServiceReader,
    commands: InvocationCommands,
    limits: LimitRules,
    clock: Callable[[], int] = wall_clock_ms,
) -> FastAPI:
    """Build the Admin API over the given ports; nothing runs until a server serves it.

    `clock` (epoch ms) is what "now" means when a report says until when a queue waits.
    """
    docs = settings.admin_api_docs != "off"
    app = FastAPI(
        title="pipeline Admin API",
        description=_DESCRIPTION,
        version=_package_version(),
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        # Starlette's redirect builds its Location from the Host header, before any
        # check: a path with a trailing slash is simply not a route.
        redirect_slashes=False,
    )
    public = {"/health"}
    if settings.admin_api_docs == "public":
        public |= {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
    app.add_middleware(
        RequestGuard,
        tokens=_tokens(settings),
        public_paths=frozenset(public),
        max_body_bytes=settings.admin_api_max_body_bytes,
    )
    contract.install(app, frozenset(public))

    @app.get("/health", summary="Liveness check (no token needed)", tags=["health"])
    def health() -> HealthResponse:
        return HealthResponse()

    ops = Operations(limits, invocations, services, commands, clock)
    routers = (
        _inspection_routes(ops),
        _queue_routes(ops),
        _command_routes(ops),
        _limit_routes(ops),
        _deployment_routes(ops),
    )
    errors.install(app, [*app.routes, *(route for r in routers for route in r.routes)])
    for router in routers:
        # The guard checks the token; the dependency declares the scheme in the OpenAPI.
        app.include_router(
            router, dependencies=[Depends(_BEARER_SCHEME)], responses=_AUTH_RESPONSES
        )
    return app


def _inspection_routes(ops: Operations) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/invocations",
        summary="List invocations, filtered by status, service and scope, a page at a time",
        description=(
            "Invocations in id order, finished ones until their retention ends. Filters "
            "combine; pass `next_cursor` back as `cursor` for the next page."
        ),
        tags=["invocations"],
    )
    def list_invocations(
        status: Annotated[InvocationStatus | None, Query(description="Only this status.")] = None,
        service: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=_MAX_SERVICE_NAME,
                description="Only this service.",
                json_schema_extra=documented(patterns.NAME),
            ),
        ] = None,
        scope: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=_MAX_SCOPE_SEGMENT,
                description=f"Only this scope; `{DEFAULT_SCOPE}` for invocations without one.",
                json_schema_extra=documented(patterns.SCOPE_ADDRESS),
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
        cursor: Annotated[
            str | None,
            Query(
                min_length=2,
                max_length=8 * _MAX_INVOCATION_ID,
                description="The `next_cursor` of the page before.",
                json_schema_extra=documented(patterns.CURSOR),
            ),
        ] = None,
    ) -> InvocationListResponse:
        return ops.list_invocations(
            status=status, service=service, scope=scope, limit=limit, cursor=cursor
        )

    @router.get(
        "/invocations/{invocation_id:path}",
        summary="Inspect one invocation: status, attempts, queue, journal, last error",
        description=(
            "A pending invocation also shows `waiting`: its position in its queue and "
            "what holds the queue back."
        ),
        tags=["invocations"],
        responses={404: {"model": ErrorResponse, "description": "No such invocation."}},
    )
    def get_invocation(invocation_id: _InvocationId) -> InvocationResponse:
        return ops.invocation(invocation_id)

    @router.get(
        "/services",
        summary="List announced services with their handlers and retry policies",
        tags=["services"],
    )
    def list_services() -> ServiceListResponse:
        return ops.service_list()

    @router.get(
        "/services/{name}",
        summary="Inspect one service: its handlers and their retry policies",
        tags=["services"],
        responses={404: {"model": ErrorResponse, "description": "No such service."}},
    )
    def get_service(
        name: Annotated[
            str,
            Path(
                min_length=1,
                max_length=_MAX_SERVICE_NAME,
                json_schema_extra=documented(patterns.NAME),
            ),
        ],
    ) -> ServiceResponse:
        return ops.service(name)

    return router


_HOW_QUEUES_ARE_NAMED = f"""\
A virtual queue is (scope, limit key). An invocation sent without a scope waits in its
service's default queue, which has no scope: address it with `{DEFAULT_SCOPE}` as the scope,
e.g. `/queues/{DEFAULT_SCOPE}/Greeter` (`{DEFAULT_SCOPE}` is never a valid scope). Only
queues with something queued, running or a rate limit still spent exist: an idle queue
leaves no state.
"""

_MAX_LIMIT_KEY = 257


def _queue_routes(ops: Operations) -> APIRouter:
    router = APIRouter(prefix="/queues", tags=["queues"])

    @router.get(
        "",
        summary="List the active virtual queues with queued and running counts",
        description=_HOW_QUEUES_ARE_NAMED,
    )
    def list_queues(
        scope: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=_MAX_SCOPE_SEGMENT,
                description=f"Only the queues of this scope; `{DEFAULT_SCOPE}` for default queues.",
                json_schema_extra=documented(patterns.SCOPE_ADDRESS),
            ),
        ] = None,
    ) -> QueueListResponse:
        return ops.queue_list(scope)

    @router.get(
        "/{scope}/{limit_key:path}",
        summary="Why a queue waits: the rule in force, counts, what blocks the head",
        description=_HOW_QUEUES_ARE_NAMED,
        responses={404: {"model": ErrorResponse, "description": "The queue is idle or unknown."}},
    )
    def get_queue(
        scope: Annotated[
            str,
            Path(
                min_length=1,
                max_length=_MAX_SCOPE_SEGMENT,
                description=f"The scope; `{DEFAULT_SCOPE}` for a service's default queue.",
                json_schema_extra=documented(patterns.SCOPE_ADDRESS),
            ),
        ],
        limit_key: Annotated[
            str,
            Path(
                min_length=1,
                max_length=_MAX_LIMIT_KEY,
                description="The limit key (`L1` or `L1/L2`); the service for a default queue.",
                json_schema_extra=documented(patterns.LIMIT_KEY),
            ),
        ],
    ) -> QueueResponse:
        return ops.queue(scope, limit_key)

    return router


def _command_routes(ops: Operations) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/invocations/{invocation_id:path}/resume",
        summary="Resume a paused invocation: its next attempt replays the journal",
        description=(
            "For an invocation paused after its last retry (`on_exhausted=pause`). "
            "Answers once the command is durable in Kafka; the scheduler then starts "
            "the next attempt, which replays the journal so completed steps do not run "
            "again. The status shown here may lag the scheduler by a moment; a repeated "
            "resume of an invocation that is no longer paused is ignored."
        ),
        tags=["invocations"],
        status_code=202,
        responses={
            202: {"description": "Resume requested: the command is durable."},
            404: {"model": ErrorResponse, "description": "No such invocation."},
            409: {"model": ErrorResponse, "description": "The invocation is not paused."},
            503: {
                "model": ErrorResponse,
                "description": "Kafka did not acknowledge the command in time; retry.",
            },
        },
    )
    def resume_invocation(invocation_id: _InvocationId) -> ResumeResponse:
        return ops.resume(invocation_id)

    return router


_HOW_RULES_APPLY = """\
A rule governs every virtual queue (scope, limit key) its pattern matches, and each
of those queues gets a budget of its own: `*` with `concurrency: 2` lets every queue
run 2 at once, never 2 in all. A queue is governed by exactly one rule, the one with
the most specific matching pattern (among equals, the smallest id):

| pattern | governs the queue (scope, limit key) |
|---|---|
| `s/L1/L2` | exactly (s, L1/L2) |
| `s/L1/*` | (s, L1/x) for any x |
| `s/L1` | (s, L1) and (s, L1/x) |
| `s/*` | (s, any limit key) |
| `s` | every queue of scope s |
| `*` | every queue |

A change takes effect at once, also for invocations already waiting.
"""

_MAX_RULE_ID = 256

_RULES_RESPONSES: dict[int | str, dict[str, object]] = {
    409: {
        "model": ErrorResponse,
        "description": "`if_version` is not the version in force: read the rules again.",
    },
    422: {"model": ErrorResponse, "description": "A pattern or value that is not valid."},
    503: {
        "model": ErrorResponse,
        "description": "Kafka did not acknowledge the change in time; read the rules, retry.",
    },
}


def _limit_routes(ops: Operations) -> APIRouter:
    router = APIRouter(prefix="/limits/rules", tags=["limits"])

    @router.get(
        "", summary="The limit rules in force, with their version", description=_HOW_RULES_APPLY
    )
    def get_rules() -> LimitRuleSetResponse:
        return ops.rules()

    @router.put(
        "",
        summary="Add or replace limit rules by id, all in one change",
        description=(
            "Applies the whole batch atomically, as one new version of the rule set, or "
            "nothing. Rules not in the batch stay. With `if_version`, applies only if the "
            "rule set is still at that version.\n\n" + _HOW_RULES_APPLY
        ),
        responses=_RULES_RESPONSES,
    )
    def put_rules(body: LimitRulesPut) -> LimitRuleSetResponse:
        return ops.put_rules(body)

    @router.delete(
        "/{rule_id:path}",
        summary="Remove one limit rule",
        description=(
            "The queues it governed fall back to the next most specific matching rule, "
            "or to no limit.\n\n" + _HOW_RULES_APPLY
        ),
        responses={
            **_RULES_RESPONSES,
            404: {"model": ErrorResponse, "description": "No rule has this id."},
        },
    )
    def delete_rule(
        rule_id: Annotated[
            str,
            Path(
                min_length=1,
                max_length=_MAX_RULE_ID,
                json_schema_extra=documented(patterns.PRINTABLE),
            ),
        ],
        if_version: Annotated[
            int | None,
            Query(ge=0, description="Remove only if the rule set is at this version."),
        ] = None,
    ) -> LimitRuleSetResponse:
        return ops.delete_rule(rule_id, if_version)

    return router


_HOW_DEPLOYMENT_LIMITS_APPLY = """\
A deployment is the pool of workers serving one service, named after the service. Its
cap bounds the attempts of that service running at once across all workers, on top of
the queue rules: an invocation its queue admits waits (`awaiting-capacity`, holding its
queue's slot) until the cap has room, and the scheduler's partitions take turns at it.
A change takes effect at once, also for invocations already waiting. Attempts already
running when a cap is first set are not counted. Caps are versioned together with the
limit rules (`if_version` is the version GET /limits/rules shows).
"""


def _deployment_routes(ops: Operations) -> APIRouter:
    router = APIRouter(prefix="/deployments", tags=["deployments"])

    @router.get(
        "",
        summary="Deployments: their caps, what runs under them and what waits",
        description=_HOW_DEPLOYMENT_LIMITS_APPLY,
    )
    def list_deployments() -> DeploymentListResponse:
        return ops.deployment_list()

    @router.get(
        "/{name}/limits",
        summary="A deployment's cap, what runs under it and what waits",
        description=_HOW_DEPLOYMENT_LIMITS_APPLY,
        responses={404: {"model": ErrorResponse, "description": "Unknown deployment."}},
    )
    def get_deployment(name: _DeploymentName) -> DeploymentResponse:
        return ops.deployment(name)

    @router.put(
        "/{name}/limits",
        summary="Set a deployment's cap on running attempts",
        description=_HOW_DEPLOYMENT_LIMITS_APPLY,
        responses=_RULES_RESPONSES,
    )
    def put_deployment(name: _DeploymentName, body: DeploymentLimitPut) -> DeploymentResponse:
        return ops.put_deployment(name, body)

    @router.delete(
        "/{name}/limits",
        summary="Lift a deployment's cap",
        description="Invocations awaiting the cap start at once.\n\n"
        + _HOW_DEPLOYMENT_LIMITS_APPLY,
        responses={
            **_RULES_RESPONSES,
            404: {"model": ErrorResponse, "description": "The deployment has no cap."},
        },
    )
    def delete_deployment(
        name: _DeploymentName,
        if_version: Annotated[
            int | None,
            Query(ge=0, description="Lift only if the limits are at this version."),
        ] = None,
    ) -> DeploymentResponse:
        return ops.delete_deployment(name, if_version)

    return router


def _tokens(settings: Settings) -> Tokens:
    def values(secrets: tuple[SecretStr, ...]) -> tuple[bytes, ...]:
        return tuple(v.get_secret_value().encode() for v in secrets if v.get_secret_value())

    tokens = Tokens(values(settings.admin_api_tokens), values(settings.admin_api_read_tokens))
    if not tokens.admin and not tokens.read:
        raise ValidationError(
            "admin_api_tokens and admin_api_read_tokens are empty, so no request could ever "
            "be authorized: set PIPELINE_ADMIN_API_TOKENS to a JSON list of tokens"
        )
    return tokens


def _package_version() -> str:
    try:
        return version("pipeline")
    except PackageNotFoundError:
        return "0+unknown"
