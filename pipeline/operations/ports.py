"""What the Admin API reads and sends, as narrow Protocols.

The materialized views in `pipeline.views`, the producer in
`pipeline.runtime.commands` and the store in `pipeline.runtime.limit_rules` satisfy
these structurally; tests pass small in-memory objects instead of a broker.
"""

from __future__ import annotations

from typing import Protocol

from pipeline.core.deployment import DeploymentLoad
from pipeline.core.fair_share import ScopeLoad
from pipeline.core.limits import RuleSet
from pipeline.core.model import QueueId, ServiceDefinition
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.views.invocation_index import InvocationPage, InvocationQuery


class InvocationReader(Protocol):
    """The scheduler's state: invocations and the virtual queues they wait or run in."""

    def invocation(self, invocation_id: str) -> Invocation | None:
        """The invocation with this id, or None when it is unknown."""
        ...

    def list_invocations(self, query: InvocationQuery) -> InvocationPage:
        """A page of the invocations the scheduler holds (finished ones until their
        retention ends) that match `query`, in id order."""
        ...

    def ahead_of(self, invocation: Invocation) -> int:
        """How many the scheduler takes before this pending (or awaiting) invocation."""
        ...

    def queue(self, queue_id: QueueId) -> VirtualQueue | None:
        """The queue with this id; None when it is idle or unknown."""
        ...

    def queues(self) -> list[VirtualQueue]:
        """Every queue with something queued, running or a rate debt; idle ones are gone."""
        ...

    def scope_load(self, scope: str) -> ScopeLoad | None:
        """The totals and budget state of a scope; None when the scope is idle."""
        ...

    def deployment_load(self, deployment: str) -> DeploymentLoad | None:
        """Units of a deployment's cap out and asked for; None when there are none."""
        ...


class ServiceReader(Protocol):
    def services(self) -> list[ServiceDefinition]:
        """Every announced service, ordered by name."""
        ...

    def service(self, name: str) -> ServiceDefinition | None:
        """The service with this name, or None when none is announced."""
        ...


class InvocationCommands(Protocol):
    def resume(self, invocation: Invocation) -> None:
        """Send a resume command for this invocation; return once it is durable.

        Raises `RetryableError` when the command could not be made durable in time.
        """
        ...


class LimitRules(Protocol):
    def ruleset(self) -> RuleSet:
        """The rule set in force as this process knows it, including its own writes."""
        ...

    def write(self, ruleset: RuleSet) -> None:
        """Make `ruleset` the one in force; return once it is durable and readable here.

        Raises `ConflictError` when it does not follow the version in force and
        `RetryableError` when it could not be made durable in time.
        """
        ...
