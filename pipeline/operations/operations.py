"""Every question an operator asks and every change an operator makes, over the ports
the surfaces bind: the Admin API's routes and the CLI's commands both call these and
render the models they return, so the two cannot drift apart."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

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
from pipeline.errors import ConflictError, NotFoundError
from pipeline.operations.models import (
    DeploymentLimitPut,
    DeploymentListResponse,
    DeploymentResponse,
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
from pipeline.operations.ports import (
    InvocationCommands,
    InvocationReader,
    LimitRules,
    ServiceReader,
)
from pipeline.runtime.clock import wall_clock_ms
from pipeline.views.invocation_index import InvocationQuery, decode_cursor


@dataclass(frozen=True)
class Operations:
    """`clock` (epoch ms) is what "now" means when a report says until when a queue
    waits. `changing` serializes changes to the limits within one process: two must not
    both derive a version from the same one.

    A surface binds only the ports its questions need (the CLI's `limits get` reads no
    scheduler state): an operation that needs a port left unbound is a wiring error.
    """

    limits: LimitRules
    invocations_port: InvocationReader | None = None
    services_port: ServiceReader | None = None
    commands_port: InvocationCommands | None = None
    clock: Callable[[], int] = wall_clock_ms
    changing: threading.Lock = field(default_factory=threading.Lock)

    @property
    def invocations(self) -> InvocationReader:
        return _bound(self.invocations_port, "the scheduler's state")

    @property
    def services(self) -> ServiceReader:
        return _bound(self.services_port, "the service catalogue")

    @property
    def commands(self) -> InvocationCommands:
        return _bound(self.commands_port, "a producer of invocation commands")

    # -- invocations -----------------------------------------------------------------

    def invocation(self, invocation_id: str) -> InvocationResponse:
        invocation = self._known_invocation(invocation_id)
        return invocation_response(invocation, self._waiting(invocation))

    def list_invocations(
        self,
        *,
        status: InvocationStatus | None = None,
        service: str | None = None,
        scope: str | None = None,
        limit: int,
        cursor: str | None = None,
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
        return invocation_list_response(self.invocations.list_invocations(query))

    def resume(self, invocation_id: str) -> ResumeResponse:
        invocation = self._known_invocation(invocation_id)
        if invocation.status is not InvocationStatus.PAUSED:
            raise ConflictError(
                f"invocation {invocation_id!r} is {invocation.status.value}; "
                "only a paused invocation can be resumed"
            )
        self.commands.resume(invocation)
        return ResumeResponse(invocation_id=invocation.id)

    # -- services ----------------------------------------------------------------------

    def service_list(self) -> ServiceListResponse:
        return service_list_response(self.services.services())

    def service(self, name: str) -> ServiceResponse:
        service = self.services.service(name)
        if service is None:
            raise NotFoundError(
                f"service {name!r} is not announced: check the name (GET /services lists "
                "them) and that a worker deployment serving it has started"
            )
        return service_response(service)

    # -- queues ------------------------------------------------------------------------

    def queue_list(self, scope: str | None = None) -> QueueListResponse:
        rules, now = self.limits.ruleset().rules, self.clock()
        wanted = None if scope is None else _checked_scope(scope)
        queues = [q for q in self.invocations.queues() if wanted is None or q.id.scope == wanted]
        queues.sort(key=lambda q: (q.id.scope, q.id.limit_key))
        return queue_list_response(
            [queue_report(q, rules, now, self.invocations.scope_load(q.id.scope)) for q in queues]
        )

    def queue(self, scope: str, limit_key: str) -> QueueResponse:
        queue_id = parse_queue_address(scope, limit_key)
        queue = self.invocations.queue(queue_id)
        if queue is None:
            raise NotFoundError(_idle_queue_message(queue_id))
        load = self.invocations.scope_load(queue_id.scope)
        return queue_response(queue_report(queue, self.limits.ruleset().rules, self.clock(), load))

    # -- limit rules -----------------------------------------------------------------

    def rules(self) -> LimitRuleSetResponse:
        return ruleset_response(self.limits.ruleset())

    def put_rules(self, body: LimitRulesPut) -> LimitRuleSetResponse:
        batch = [limit_rule(rule) for rule in body.rules]
        with self.changing:
            updated = rule_sets.put(self.limits.ruleset(), batch, body.if_version)
            self.limits.write(updated)
        return ruleset_response(updated)

    def delete_rule(self, rule_id: str, if_version: int | None = None) -> LimitRuleSetResponse:
        with self.changing:
            updated = rule_sets.delete(self.limits.ruleset(), rule_id, if_version)
            self.limits.write(updated)
        return ruleset_response(updated)

    # -- deployments -----------------------------------------------------------------

    def deployment_list(self) -> DeploymentListResponse:
        ruleset = self.limits.ruleset()
        names = {s.name for s in self.services.services()}
        names.update(d.deployment for d in ruleset.deployments)
        return DeploymentListResponse(
            version=ruleset.version,
            deployments=[self._deployment(n, ruleset) for n in sorted(names)],
        )

    def deployment(self, name: str) -> DeploymentResponse:
        ruleset = self.limits.ruleset()
        if ruleset.deployment_limit(name) is None and self.services.service(name) is None:
            raise NotFoundError(
                f"deployment {name!r} has no cap and no worker announced service {name!r}: "
                "check the name (GET /deployments lists them)"
            )
        return self._deployment(name, ruleset)

    def put_deployment(self, name: str, body: DeploymentLimitPut) -> DeploymentResponse:
        limit = DeploymentLimit(check_deployment_name(name), body.concurrency)
        with self.changing:
            updated = rule_sets.put_deployment_limit(self.limits.ruleset(), limit, body.if_version)
            self.limits.write(updated)
        return self._deployment(name, updated)

    def delete_deployment(self, name: str, if_version: int | None = None) -> DeploymentResponse:
        with self.changing:
            updated = rule_sets.delete_deployment_limit(self.limits.ruleset(), name, if_version)
            self.limits.write(updated)
        return self._deployment(name, updated)

    # -- helpers -----------------------------------------------------------------------

    def _deployment(self, name: str, ruleset: rule_sets.RuleSet) -> DeploymentResponse:
        announced = self.services.service(name) is not None
        load = self.invocations.deployment_load(name)
        return deployment_response(name, ruleset, load, announced)

    def _known_invocation(self, invocation_id: str) -> Invocation:
        invocation = self.invocations.invocation(invocation_id)
        if invocation is None:
            raise NotFoundError(
                f"invocation {invocation_id!r} does not exist: check the id (it is "
                "case-sensitive and is the one returned when the invocation was submitted)"
            )
        return invocation

    def _waiting(self, invocation: Invocation) -> WaitingReport | None:
        if invocation.status is InvocationStatus.AWAITING_CAPACITY:
            return awaiting_report(invocation, self.invocations.ahead_of(invocation))
        if invocation.status is not InvocationStatus.PENDING:
            return None
        return waiting_report(
            invocation,
            self.invocations.ahead_of(invocation),
            self.invocations.queue(invocation.queue_id),
            self.limits.ruleset().rules,
            self.clock(),
            self.invocations.scope_load(invocation.queue_id.scope),
        )


_P = TypeVar("_P")


def _bound(port: _P | None, what: str) -> _P:
    if port is None:
        raise RuntimeError(f"this operation reads {what}, which this surface did not bind")
    return port


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
