"""What the Admin API reads and sends, as narrow Protocols.

The materialized views in `pipeline.runtime.views` and the producer in
`pipeline.runtime.commands` satisfy these structurally; tests pass small in-memory
objects instead of a broker.
"""

from __future__ import annotations

from typing import Protocol

from pipeline.core.model import ServiceDefinition
from pipeline.core.state import Invocation


class InvocationReader(Protocol):
    def invocation(self, invocation_id: str) -> Invocation | None:
        """The invocation with this id, or None when it is unknown."""
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
