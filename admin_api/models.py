"""Request and response models of the Admin API, and the one place that maps core
types to and from them.

These are the HTTP contract, free to differ from the domain: never pass them into
`pipeline`, and never return a core dataclass from a route.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.limits import LimitRule, RulePattern, RuleSet
from pipeline.core.model import (
    Failure,
    HandlerDefinition,
    JournalEntry,
    RetryPolicy,
    ServiceDefinition,
    Target,
)
from pipeline.core.state import Invocation


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class InvocationResponse(_Response):
    id: str
    status: str = Field(description="pending, running, backing-off, paused, completed or failed.")
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


class LimitRuleModel(_Response):
    """One limit rule, as sent and as shown.

    Values are checked by the core, not here, so that a bad one is refused with the
    same message wherever rules come from (Admin API, CLI).
    """

    id: str = Field(min_length=1, max_length=256, description="Name of the rule, unique.")
    pattern: str = Field(
        description="Which queues the rule governs: `*`, `scope`, `scope/*`, `scope/L1`, "
        "`scope/L1/*` or `scope/L1/L2`. The most specific matching pattern governs a queue.",
        examples=["acme/*"],
    )
    concurrency: int | None = Field(
        default=None, description="Running attempts at once per queue (>= 0); null: no limit."
    )
    rate: float | None = Field(
        default=None, description="Starts per second per queue (> 0); excess waits, never dropped."
    )
    burst: int = Field(default=1, description="Starts that may come at once under `rate` (>= 1).")
    weight: int = Field(
        default=1, description="Fair share among the limit keys of a scope that compete (>= 1)."
    )
    max_queued: int | None = Field(
        default=None,
        description="Backlog cap per queue (>= 0): a request over it fails at once; null: none.",
    )
    hold_while_suspended: bool = Field(
        default=False, description="True: a suspended invocation keeps its concurrency slot."
    )
    paused: bool = Field(default=False, description="True: the queues start nothing.")


class LimitRulesPut(_Response):
    rules: list[LimitRuleModel] = Field(
        description="Rules to add, or to replace by id; all are applied, or none."
    )
    if_version: int | None = Field(
        default=None,
        description="Apply only if the rule set is at this version (409 otherwise): read, "
        "change, write without overwriting someone else's change.",
    )


class LimitRuleSetResponse(_Response):
    version: int = Field(description="Number of changes so far; 0 before the first.")
    rules: list[LimitRuleModel] = Field(description="Every rule in force, ordered by id.")


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


def invocation_response(invocation: Invocation) -> InvocationResponse:
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
    return LastError(type=failure.error_type, message=failure.message, terminal=failure.terminal)


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
