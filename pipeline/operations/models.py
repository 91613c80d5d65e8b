"""Request and response models of the Admin API, and the one place that maps core
types to and from them.

These are the HTTP contract, free to differ from the domain: never pass them into
`pipeline`, and never return a core dataclass from a route.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from pydantic.config import JsonDict

from pipeline.core.deployment import DeploymentLoad
from pipeline.core.ids import sent_id
from pipeline.core.introspection import QueueReport, WaitingReport, explain, queue_address
from pipeline.core.limits import MIN_RATE_PER_S, LimitRule, RulePattern, RuleSet
from pipeline.core.model import (
    MAX_AVRO_INT,
    Failure,
    HandlerDefinition,
    JournalEntry,
    QueueId,
    RetryPolicy,
    ServiceDefinition,
    Target,
)
from pipeline.core.state import Invocation
from pipeline.errors import ValidationError
from pipeline.operations.patterns import PRINTABLE, RULE_PATTERN, SCOPE
from pipeline.views.invocation_index import InvocationPage


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _integral(value: object) -> object:
    # JSON has one number type: 3.0 is the integer 3 (JSON Schema says so too), but true
    # is no number and "3" no integer, which lax validation would take.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_integral)]
"""An integer as JSON writes it: 3 or 3.0, never true or "3"."""
JsonVersion = Annotated[int, Field(ge=0), BeforeValidator(_integral)]


class _Request(_Response):
    # JSON `true` is no number and `0` no boolean: without strict mode pydantic would
    # take one for the other.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class FieldError(_Response):
    path: str = Field(description="Where the value sits, e.g. `path.invocation_id`.")
    message: str


class ErrorDetail(_Response):
    type: str = Field(description="Stable, machine-readable kind of error.")
    message: str = Field(description="What went wrong and what to change.")
    fields: list[FieldError] | None = Field(
        default=None, description="For invalid requests: each offending field."
    )


class ErrorResponse(_Response):
    error: ErrorDetail


class HealthResponse(_Response):
    status: Literal["ok"] = "ok"


class TargetModel(_Response):
    service: str
    handler: str
    key: str | None = Field(default=None, description="Object key, for keyed services.")


class JournalEntrySummary(_Response):
    index: int
    kind: str
    name: str
    failed: bool


class LastError(_Response):
    type: str
    message: str
    terminal: bool = Field(description="True when no retry can help.")
    code: int | None = Field(
        default=None,
        description="The code of the handler's TerminalError (500 unless it gave one); "
        "null for other failures.",
    )


class WaitingModel(_Response):
    queue_id: str = Field(description="`scope/limitKey`; `/Service` for a default queue.")
    queue_path: str = Field(description="Where GET shows the queue, e.g. `/queues/~/Greeter`.")
    position: int = Field(description="1 for the head of the queue, which starts next.")
    ahead: int = Field(description="Pending invocations of the queue that start before it.")
    blocker: str | None = Field(
        description="What holds the queue's head back: concurrency, rate, paused or "
        "paused_until; null when the head may start now (then it waits only for `ahead`). "
        "deployment_capacity for an invocation the queue admitted that waits for its "
        "deployment's cap; `ahead` then counts those before it on its partition."
    )
    blocker_rule_id: str | None = Field(description="The limit rule that blocks, if one does.")
    blocker_level: str | None = Field(
        default=None,
        description="Whose budget blocks: `queue` (the queue's own rule), `scope` (the "
        "shared budget of its scope, a rule on the bare scope) or `deployment`.",
    )
    deployment: str | None = Field(
        default=None, description="For deployment_capacity: the deployment whose cap."
    )
    blocked_until: datetime | None = Field(
        description="For rate and paused_until: when that blocker clears."
    )


class AwaitedCallModel(_Response):
    entry_index: int = Field(description="The call's entry in the journal.")
    callee_id: str = Field(description="The invocation it awaits: GET /invocations/{id}.")
    target: str = Field(description="What it called: `Service/handler`.")


class InvocationResponse(_Response):
    id: str
    status: str = Field(
        description="pending, awaiting-capacity, running, suspended (awaiting a call's "
        "result), backing-off, paused, completed or failed."
    )
    target: TargetModel
    attempts: int = Field(description="Number of the current or last attempt; 0 before the first.")
    scope: str | None
    limit_key: str | None
    priority: int = Field(description="0 runs first, 9 last.")
    queue_id: str = Field(description="The virtual queue the invocation waits or runs in.")
    idempotency_key: str | None
    created_at: datetime
    first_started_at: datetime | None
    finished_at: datetime | None
    journal: list[JournalEntrySummary]
    last_error: LastError | None
    output_size_bytes: int | None = Field(description="Size of the output once completed.")
    waiting: WaitingModel | None = Field(
        default=None,
        description="For a pending invocation: where it stands in its queue and what "
        "holds the queue back; for one awaiting capacity: which deployment's cap. Null "
        "otherwise.",
    )
    awaiting_call: AwaitedCallModel | None = Field(
        default=None,
        description="For a suspended invocation: the call whose result resumes it.",
    )


class InvocationSummary(_Response):
    id: str
    status: str
    target: TargetModel
    attempts: int
    scope: str | None
    limit_key: str | None
    priority: int
    created_at: datetime
    finished_at: datetime | None
    path: str = Field(description="Where the whole invocation is: GET it for the journal.")


class InvocationListResponse(_Response):
    invocations: list[InvocationSummary] = Field(description="In id order.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page. A page may "
        "hold fewer than `limit` invocations and still have a next one: a page stops after "
        "looking at a bounded number of candidates."
    )


class ResumeResponse(_Response):
    invocation_id: str
    status: Literal["resume-requested"] = Field(
        default="resume-requested",
        description="The command is durable; the scheduler starts the next attempt when it "
        "reads it. GET the invocation to follow it.",
    )


class RetryPolicyModel(_Response):
    max_attempts: int
    initial_interval_ms: int
    max_interval_ms: int
    multiplier: float
    on_exhausted: str = Field(description="fail, or pause (resumable from the Admin API).")


class HandlerModel(_Response):
    name: str
    retry: RetryPolicyModel


class ServiceResponse(_Response):
    name: str
    keyed: bool
    handlers: list[HandlerModel]


class ServiceListResponse(_Response):
    services: list[ServiceResponse]


class QueueSummary(_Response):
    queue_id: str = Field(description="`scope/limitKey`; `/Service` for a default queue.")
    scope: str | None = Field(description="Null for a service's default queue.")
    limit_key: str = Field(description="For a default queue: the service name.")
    path: str = Field(description="Where GET shows the queue, e.g. `/queues/acme/user-9`.")
    queued: int
    running: int
    rule_pattern: str | None = Field(description="Pattern of the rule in force; null: none.")


class QueueListResponse(_Response):
    queues: list[QueueSummary] = Field(description="Ordered by scope, then limit key.")


class QueueRuleModel(_Response):
    id: str
    pattern: str = Field(description="The pattern that matched: the most specific one.")
    concurrency: int | None
    rate: float | None
    burst: int
    paused: bool
    max_queued: int | None


class ScopeBudgetModel(_Response):
    rule_id: str = Field(description="The rule on the bare scope: one budget for all its queues.")
    concurrency: int | None
    rate: float | None
    burst: int
    paused: bool
    running: int = Field(description="Running in all queues of the scope.")
    queued: int = Field(description="Waiting in all queues of the scope.")


class QueueResponse(_Response):
    queue_id: str = Field(description="`scope/limitKey`; `/Service` for a default queue.")
    scope: str | None = Field(description="Null for a service's default queue.")
    limit_key: str
    rule: QueueRuleModel | None = Field(description="The rule in force; null: no limits.")
    running: int
    queued: int
    awaiting_capacity: int = Field(
        default=0,
        description="Of `running`: admitted invocations that wait for their deployment's "
        "cap (PUT /deployments/{name}/limits) and hold the queue's slots meanwhile.",
    )
    head_blocker: str | None = Field(
        description="What holds the head back: concurrency, rate, paused, paused_until or "
        "deployment_capacity (the queue's slots are held by invocations waiting for their "
        "deployment's cap); null when nothing waits or the head may start now."
    )
    head_blocker_level: str | None = Field(
        default=None,
        description="Whose budget blocks the head: `queue` (the rule above), `scope` "
        "(scope_budget) or `deployment`.",
    )
    scope_budget: ScopeBudgetModel | None = Field(
        default=None, description="The shared budget of the queue's scope; null: none."
    )
    blocked_until: datetime | None = Field(
        description="For rate and paused_until: when that blocker clears."
    )
    next_eligible: datetime | None = Field(
        description="Earliest instant the head could start if nothing else changes; null "
        "when it waits for a change (a running invocation ending, the rule being edited) "
        "or nothing is queued."
    )
    decided_at: datetime | None = Field(
        default=None,
        description="When the scheduler decided what holds the head back: the blocker "
        "shown is its decision then, written with the queue's state.",
    )
    explanation: str = Field(description="The same, in one sentence.")


# JSON Schema for what the core refuses across fields: no backlog cap on a scope budget.
_NO_MAX_QUEUED_ON_A_BUDGET: JsonDict = {
    "if": {"properties": {"pattern": {"pattern": SCOPE}}, "required": ["pattern"]},
    "then": {"properties": {"max_queued": {"type": "null"}}},
}


class LimitRuleModel(_Request):
    """One limit rule, as sent and as shown.

    The core checks every value, so that a bad one is refused with the same message
    wherever rules come from (Admin API, CLI); the bounds here repeat its bounds so that
    the OpenAPI document states them.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, json_schema_extra=_NO_MAX_QUEUED_ON_A_BUDGET
    )

    id: str = Field(
        min_length=1,
        max_length=256,
        json_schema_extra={"pattern": PRINTABLE},
        description="Name of the rule, unique.",
    )
    pattern: str = Field(
        json_schema_extra={"pattern": RULE_PATTERN},
        description="`*`, `scope/*`, `scope/L1`, `scope/L1/*` or `scope/L1/L2`: a queue's "
        "own rule, applied to each matching queue on its own; the most specific matching "
        "pattern governs a queue. A bare `scope`: one budget shared by all the scope's "
        "queues (their total running and starts), on top of each queue's own rule.",
        examples=["acme/*"],
    )
    concurrency: JsonInt | None = Field(
        default=None,
        json_schema_extra={"minimum": 0, "maximum": MAX_AVRO_INT},
        description="Running attempts at once per queue, or in the whole scope for a bare "
        "`scope` pattern (>= 0); null: no limit.",
    )
    rate: float | None = Field(
        default=None,
        json_schema_extra={"minimum": MIN_RATE_PER_S},
        description="Starts per second per queue, or in the whole scope for a bare `scope` "
        "pattern (at least one a day); excess waits, never dropped.",
    )
    burst: JsonInt = Field(
        default=1,
        json_schema_extra={"minimum": 1, "maximum": MAX_AVRO_INT},
        description="Starts that may come at once under `rate` (>= 1).",
    )
    weight: JsonInt = Field(
        default=1,
        json_schema_extra={"minimum": 1, "maximum": MAX_AVRO_INT},
        description="On a queue's own rule: its share of the scope's budget when the "
        "scope's queues compete for it (>= 1); a queue with weight 4 starts four times as "
        "often as one with weight 1 while both wait.",
    )
    max_queued: JsonInt | None = Field(
        default=None,
        json_schema_extra={"minimum": 0, "maximum": MAX_AVRO_INT},
        description="Backlog cap per queue (>= 0): a request over it fails at once; null: "
        "none. Not allowed on a bare `scope` pattern: put it on `scope/*`.",
    )
    hold_while_suspended: bool = Field(
        default=False,
        description="True: an invocation suspended on a `ctx.service_call` keeps its "
        "queue's concurrency slot and resumes without admission; false: the slot goes to "
        "the next invocation and the resumed one waits its turn again.",
    )
    paused: bool = Field(default=False, description="True: the queues start nothing.")


class LimitRulesPut(_Request):
    rules: list[LimitRuleModel] = Field(
        json_schema_extra={"minItems": 1},
        description="Rules to add, or to replace by id, applied in order (a repeated id "
        "ends as its last rule); all are applied, or none.",
    )
    if_version: JsonVersion | None = Field(
        default=None,
        description="Apply only if the rule set is at this version (409 otherwise): read, "
        "change, write without overwriting someone else's change.",
    )


class LimitRuleSetResponse(_Response):
    version: int = Field(description="Number of changes so far; 0 before the first.")
    rules: list[LimitRuleModel] = Field(description="Every rule in force, ordered by id.")


class DeploymentLimitPut(_Request):
    concurrency: JsonInt = Field(
        ge=0,
        json_schema_extra={"maximum": MAX_AVRO_INT},
        description="Attempts of the service running at once across all its workers; 0 "
        "holds every new start (drain the pool).",
    )
    if_version: JsonVersion | None = Field(
        default=None,
        description="Apply only if the limits are at this version (409 otherwise); the "
        "version is the one GET /limits/rules shows.",
    )


class DeploymentResponse(_Response):
    deployment: str = Field(description="The deployment: the service its workers serve.")
    concurrency: int | None = Field(description="The cap; null: none.")
    running: int = Field(
        description="Attempts running under the cap (units granted, not given back). "
        "Attempts started before the cap was set are not counted."
    )
    awaiting: int = Field(description="Admitted invocations waiting for a unit of the cap.")
    announced: bool = Field(description="Whether a worker has announced the service.")
    version: int = Field(description="Version of the limits this cap belongs to.")


class DeploymentListResponse(_Response):
    version: int
    deployments: list[DeploymentResponse] = Field(
        description="Every announced service and every deployment with a cap, by name."
    )


def deployment_response(
    deployment: str,
    ruleset: RuleSet,
    load: DeploymentLoad | None,
    announced: bool,
) -> DeploymentResponse:
    limit = ruleset.deployment_limit(deployment)
    return DeploymentResponse(
        deployment=deployment,
        concurrency=None if limit is None else limit.concurrency,
        running=0 if load is None else load.running,
        awaiting=0 if load is None else load.waiting,
        announced=announced,
        version=ruleset.version,
    )


def limit_rule(model: LimitRuleModel) -> LimitRule:
    """The core rule a request describes; `ValidationError` names a bad pattern or value."""
    return LimitRule(
        id=model.id,
        pattern=RulePattern.parse(model.pattern),
        concurrency=model.concurrency,
        rate_per_s=model.rate,
        burst=model.burst,
        weight=model.weight,
        max_queued=model.max_queued,
        hold_while_suspended=model.hold_while_suspended,
        paused=model.paused,
    )


def ruleset_response(ruleset: RuleSet) -> LimitRuleSetResponse:
    return LimitRuleSetResponse(
        version=ruleset.version,
        rules=[
            LimitRuleModel(
                id=rule.id,
                pattern=str(rule.pattern),
                concurrency=rule.concurrency,
                rate=rule.rate_per_s,
                burst=rule.burst,
                weight=rule.weight,
                max_queued=rule.max_queued,
                hold_while_suspended=rule.hold_while_suspended,
                paused=rule.paused,
            )
            for rule in ruleset.rules
        ],
    )


def invocation_response(
    invocation: Invocation, waiting: WaitingReport | None = None
) -> InvocationResponse:
    request = invocation.request
    return InvocationResponse(
        id=invocation.id,
        status=invocation.status.value,
        target=_target(request.target),
        attempts=invocation.attempt,
        scope=request.scope,
        limit_key=request.limit_key,
        priority=request.priority,
        queue_id=str(invocation.queue_id),
        idempotency_key=request.idempotency_key,
        created_at=_instant(request.created_at_ms),
        first_started_at=_optional_instant(invocation.first_started_at_ms),
        finished_at=_optional_instant(invocation.finished_at_ms),
        journal=[_journal_entry(entry) for entry in invocation.journal],
        last_error=_last_error(invocation.last_failure),
        output_size_bytes=None if invocation.output is None else len(invocation.output),
        waiting=None if waiting is None else _waiting(waiting),
        awaiting_call=_awaited_call(invocation),
    )


def invocation_list_response(page: InvocationPage) -> InvocationListResponse:
    return InvocationListResponse(
        invocations=[
            InvocationSummary(
                id=invocation.id,
                status=invocation.status.value,
                target=_target(invocation.request.target),
                attempts=invocation.attempt,
                scope=invocation.request.scope,
                limit_key=invocation.request.limit_key,
                priority=invocation.request.priority,
                created_at=_instant(invocation.request.created_at_ms),
                finished_at=_optional_instant(invocation.finished_at_ms),
                path=f"/invocations/{quote(invocation.id, safe='')}",
            )
            for invocation in page.invocations
        ],
        next_cursor=page.next_cursor,
    )


def _awaited_call(invocation: Invocation) -> AwaitedCallModel | None:
    index = invocation.awaiting_call
    if index is None or index >= len(invocation.journal):
        return None
    target = invocation.journal[index].name
    return AwaitedCallModel(
        entry_index=index, callee_id=sent_id(invocation.id, index), target=target
    )


def queue_path(queue_id: QueueId) -> str:
    return f"/queues/{queue_address(queue_id)}"


def queue_list_response(reports: list[QueueReport]) -> QueueListResponse:
    return QueueListResponse(
        queues=[
            QueueSummary(
                queue_id=str(report.queue_id),
                scope=report.queue_id.scope or None,
                limit_key=report.queue_id.limit_key,
                path=queue_path(report.queue_id),
                queued=report.queued,
                running=report.running,
                rule_pattern=report.rule_pattern,
            )
            for report in reports
        ]
    )


def queue_response(report: QueueReport) -> QueueResponse:
    rule = None
    if report.rule_id is not None and report.rule_pattern is not None:
        rule = QueueRuleModel(
            id=report.rule_id,
            pattern=report.rule_pattern,
            concurrency=report.concurrency,
            rate=report.rate_per_s,
            burst=report.burst or 1,
            paused=report.paused,
            max_queued=report.max_queued,
        )
    return QueueResponse(
        queue_id=str(report.queue_id),
        scope=report.queue_id.scope or None,
        limit_key=report.queue_id.limit_key,
        rule=rule,
        running=report.running,
        queued=report.queued,
        awaiting_capacity=report.awaiting_capacity,
        head_blocker=None if report.head_blocker is None else report.head_blocker.value,
        head_blocker_level=(
            None if report.head_blocker_level is None else report.head_blocker_level.value
        ),
        scope_budget=_scope_budget(report),
        blocked_until=_optional_instant(report.blocked_until_ms),
        next_eligible=_optional_instant(report.next_eligible_ms),
        decided_at=_optional_instant(report.decided_at_ms),
        explanation=explain(report),
    )


def _scope_budget(report: QueueReport) -> ScopeBudgetModel | None:
    budget = report.scope_budget
    if budget is None:
        return None
    return ScopeBudgetModel(
        rule_id=budget.rule_id,
        concurrency=budget.concurrency,
        rate=budget.rate_per_s,
        burst=budget.burst,
        paused=budget.paused,
        running=budget.running,
        queued=budget.queued,
    )


def _waiting(report: WaitingReport) -> WaitingModel:
    return WaitingModel(
        queue_id=str(report.queue_id),
        queue_path=queue_path(report.queue_id),
        position=report.position,
        ahead=report.ahead,
        blocker=None if report.blocker is None else report.blocker.value,
        blocker_rule_id=report.rule_id,
        blocker_level=None if report.level is None else report.level.value,
        deployment=report.deployment,
        blocked_until=_optional_instant(report.blocked_until_ms),
    )


def service_response(service: ServiceDefinition) -> ServiceResponse:
    return ServiceResponse(
        name=service.name,
        keyed=service.keyed,
        handlers=[_handler(handler) for handler in service.handlers],
    )


def service_list_response(services: list[ServiceDefinition]) -> ServiceListResponse:
    return ServiceListResponse(services=[service_response(service) for service in services])


def _target(target: Target) -> TargetModel:
    return TargetModel(service=target.service, handler=target.handler, key=target.key)


def _journal_entry(entry: JournalEntry) -> JournalEntrySummary:
    return JournalEntrySummary(
        index=entry.index,
        kind=entry.kind.value,
        name=entry.name,
        failed=entry.failure is not None,
    )


def _last_error(failure: Failure | None) -> LastError | None:
    if failure is None:
        return None
    return LastError(
        type=failure.error_type,
        message=failure.message,
        terminal=failure.terminal,
        code=failure.code,
    )


def _handler(handler: HandlerDefinition) -> HandlerModel:
    return HandlerModel(name=handler.name, retry=_retry(handler.retry))


def _retry(policy: RetryPolicy) -> RetryPolicyModel:
    return RetryPolicyModel(
        max_attempts=policy.max_attempts,
        initial_interval_ms=policy.initial_interval_ms,
        max_interval_ms=policy.max_interval_ms,
        multiplier=policy.multiplier,
        on_exhausted=policy.on_exhausted.value,
    )


def _instant(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


def _optional_instant(epoch_ms: int | None) -> datetime | None:
    return None if epoch_ms is None else _instant(epoch_ms)


_M = TypeVar("_M", bound=BaseModel)


def parse_body(model: type[_M], body: str | dict[str, object], where: str) -> _M:
    """A request body given elsewhere than over HTTP (a file or arguments of the CLI), as
    JSON text or decoded, checked exactly as the Admin API checks it; `ValidationError`
    names the fields to fix."""
    try:
        if isinstance(body, str):
            return model.model_validate_json(body)
        return model.model_validate(body)
    except PydanticValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors()[:10]
        )
        raise ValidationError(f"{where}: not valid, fix these fields: {fields}") from None
