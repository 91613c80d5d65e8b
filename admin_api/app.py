"""The Admin API application factory: routes, bearer-token auth and error rendering.

Every error leaves the API in one shape, `{"error": {"type", "message"}}`, where the
message says what to change; pipeline errors map to HTTP statuses in `_ERROR_STATUS`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query
from fastapi.security import HTTPBearer
from pydantic import SecretStr

from admin_api import contract, errors, patterns
from admin_api.guard import HOW_TO_AUTHENTICATE, RequestGuard, Tokens
from admin_api.models import (
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
    deployment_response,
    invocation_list_response,
    invocation_response,
    limit_rule,
    queue_list_response,
    queue_response,
    ruleset_response,
    service_list_response,
    service_response,
)
from admin_api.patterns import documented
from admin_api.ports import InvocationCommands, InvocationReader, LimitRules, ServiceReader
from pipeline.core import limits as rule_sets
from pipeline.core.deployment import DeploymentLimit, check_deployment_name
from pipeline.core.introspection import (
    DEFAULT_SCOPE,
    WaitingReport,
    awaiting_report,
    parse_queue_address,
    parse_scope,
    queue_address,
    queue_report,
    waiting_report,
)
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.model import QueueId, validate_scope
from pipeline.core.state import Invocation
from pipeline.errors import (
    ConflictError,
    NotFoundError,
    ValidationError,
)
from pipeline.runtime.clock import wall_clock_ms
from pipeline.settings import Settings
from pipeline.views.invocation_index import (
    DEFAULT_PAGE,
    MAX_PAGE,
    InvocationQuery,
    decode_cursor,
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

    # One limit change at a time: two requests must not both derive a version from the
    # same one, or the second would be refused as a conflict it never asked to check.
    changing = threading.Lock()
    routers = (
        _inspection_routes(invocations, services, limits, clock),
        _queue_routes(invocations, limits, clock),
        _command_routes(invocations, commands),
        _limit_routes(limits, changing),
        _deployment_routes(invocations, services, limits, changing),
    )
    errors.install(app, [*app.routes, *(route for r in routers for route in r.routes)])
    for router in routers:
        # The guard checks the token; the dependency declares the scheme in the OpenAPI.
        app.include_router(
            router, dependencies=[Depends(_BEARER_SCHEME)], responses=_AUTH_RESPONSES
        )
    return app


def _known_invocation(invocations: InvocationReader, invocation_id: str) -> Invocation:
    invocation = invocations.invocation(invocation_id)
    if invocation is None:
        raise NotFoundError(
            f"invocation {invocation_id!r} does not exist: check the id (it is "
            "case-sensitive and is the one returned when the invocation was submitted)"
        )
    return invocation


def _inspection_routes(
    invocations: InvocationReader,
    services: ServiceReader,
    limits: LimitRules,
    clock: Callable[[], int],
) -> APIRouter:
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
        if service is not None:
            check_deployment_name(service)
        query = InvocationQuery(
            status=status,
            service=service,
            scope=None if scope is None else _checked_scope(scope),
            limit=limit,
            after=None if cursor is None else decode_cursor(cursor),
        )
        return invocation_list_response(invocations.list_invocations(query))

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
        invocation = _known_invocation(invocations, invocation_id)
        return invocation_response(invocation, _waiting(invocation, invocations, limits, clock))

    @router.get(
        "/services",
        summary="List announced services with their handlers and retry policies",
        tags=["services"],
    )
    def list_services() -> ServiceListResponse:
        return service_list_response(services.services())

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
        service = services.service(name)
        if service is None:
            raise NotFoundError(
                f"service {name!r} is not announced: check the name (GET /services lists "
                "them) and that a worker deployment serving it has started"
            )
        return service_response(service)

    return router


def _waiting(
    invocation: Invocation,
    invocations: InvocationReader,
    limits: LimitRules,
    clock: Callable[[], int],
) -> WaitingReport | None:
    if invocation.status is InvocationStatus.AWAITING_CAPACITY:
        return awaiting_report(invocation, invocations.ahead_of(invocation))
    if invocation.status is not InvocationStatus.PENDING:
        return None
    return waiting_report(
        invocation,
        invocations.ahead_of(invocation),
        invocations.queue(invocation.queue_id),
        limits.ruleset().rules,
        clock(),
        invocations.scope_load(invocation.queue_id.scope),
    )


_HOW_QUEUES_ARE_NAMED = f"""\
A virtual queue is (scope, limit key). An invocation sent without a scope waits in its
service's default queue, which has no scope: address it with `{DEFAULT_SCOPE}` as the scope,
e.g. `/queues/{DEFAULT_SCOPE}/Greeter` (`{DEFAULT_SCOPE}` is never a valid scope). Only
queues with something queued, running or a rate limit still spent exist: an idle queue
leaves no state.
"""

_MAX_LIMIT_KEY = 257


def _queue_routes(
    invocations: InvocationReader, limits: LimitRules, clock: Callable[[], int]
) -> APIRouter:
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
        rules, now = limits.ruleset().rules, clock()
        wanted = None if scope is None else _checked_scope(scope)
        queues = [q for q in invocations.queues() if wanted is None or q.id.scope == wanted]
        queues.sort(key=lambda q: (q.id.scope, q.id.limit_key))
        return queue_list_response(
            [queue_report(q, rules, now, invocations.scope_load(q.id.scope)) for q in queues]
        )

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
        queue_id = parse_queue_address(scope, limit_key)
        queue = invocations.queue(queue_id)
        if queue is None:
            raise NotFoundError(_idle_queue_message(queue_id))
        report = queue_report(
            queue, limits.ruleset().rules, clock(), invocations.scope_load(queue_id.scope)
        )
        return queue_response(report)

    return router


def _checked_scope(address: str) -> str:
    """A scope as an address or filter gives it (`~`: none), refused when malformed: a
    filter on a scope that cannot exist would quietly match nothing."""
    scope = parse_scope(address)
    return validate_scope(scope) if scope else scope


def _idle_queue_message(queue_id: QueueId) -> str:
    return (
        f"no invocation waits or runs in queue {queue_address(queue_id)!r}: an idle queue "
        "leaves no state. Check the scope and limit key (they are case-sensitive; a "
        f"service's default queue is /queues/{DEFAULT_SCOPE}/<Service>); GET /queues lists "
        "the active queues"
    )


def _command_routes(invocations: InvocationReader, commands: InvocationCommands) -> APIRouter:
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
        invocation = _known_invocation(invocations, invocation_id)
        if invocation.status is not InvocationStatus.PAUSED:
            raise ConflictError(
                f"invocation {invocation_id!r} is {invocation.status.value}; "
                "only a paused invocation can be resumed"
            )
        commands.resume(invocation)
        return ResumeResponse(invocation_id=invocation.id)

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


def _limit_routes(limits: LimitRules, changing: threading.Lock) -> APIRouter:
    router = APIRouter(prefix="/limits/rules", tags=["limits"])

    @router.get(
        "", summary="The limit rules in force, with their version", description=_HOW_RULES_APPLY
    )
    def get_rules() -> LimitRuleSetResponse:
        return ruleset_response(limits.ruleset())

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
        batch = [limit_rule(rule) for rule in body.rules]
        with changing:
            updated = rule_sets.put(limits.ruleset(), batch, body.if_version)
            limits.write(updated)
        return ruleset_response(updated)

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
        with changing:
            updated = rule_sets.delete(limits.ruleset(), rule_id, if_version)
            limits.write(updated)
        return ruleset_response(updated)

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


def _deployment_routes(
    invocations: InvocationReader,
    services: ServiceReader,
    limits: LimitRules,
    changing: threading.Lock,
) -> APIRouter:
    router = APIRouter(prefix="/deployments", tags=["deployments"])

    def report(name: str, ruleset: rule_sets.RuleSet) -> DeploymentResponse:
        announced = services.service(name) is not None
        return deployment_response(name, ruleset, invocations.deployment_load(name), announced)

    @router.get(
        "",
        summary="Deployments: their caps, what runs under them and what waits",
        description=_HOW_DEPLOYMENT_LIMITS_APPLY,
    )
    def list_deployments() -> DeploymentListResponse:
        ruleset = limits.ruleset()
        names = {s.name for s in services.services()}
        names.update(d.deployment for d in ruleset.deployments)
        return DeploymentListResponse(
            version=ruleset.version, deployments=[report(n, ruleset) for n in sorted(names)]
        )

    @router.get(
        "/{name}/limits",
        summary="A deployment's cap, what runs under it and what waits",
        description=_HOW_DEPLOYMENT_LIMITS_APPLY,
        responses={404: {"model": ErrorResponse, "description": "Unknown deployment."}},
    )
    def get_deployment(name: _DeploymentName) -> DeploymentResponse:
        ruleset = limits.ruleset()
        if ruleset.deployment_limit(name) is None and services.service(name) is None:
            raise NotFoundError(
                f"deployment {name!r} has no cap and no worker announced service {name!r}: "
                "check the name (GET /deployments lists them)"
            )
        return report(name, ruleset)

    @router.put(
        "/{name}/limits",
        summary="Set a deployment's cap on running attempts",
        description=_HOW_DEPLOYMENT_LIMITS_APPLY,
        responses=_RULES_RESPONSES,
    )
    def put_deployment(name: _DeploymentName, body: DeploymentLimitPut) -> DeploymentResponse:
        limit = DeploymentLimit(check_deployment_name(name), body.concurrency)
        with changing:
            updated = rule_sets.put_deployment_limit(limits.ruleset(), limit, body.if_version)
            limits.write(updated)
        return report(name, updated)

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
        with changing:
            updated = rule_sets.delete_deployment_limit(limits.ruleset(), name, if_version)
            limits.write(updated)
        return report(name, updated)

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
