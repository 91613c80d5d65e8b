"""What the Admin API reads, as narrow Protocols.

The materialized views in `pipeline.runtime.views` satisfy these structurally; tests
pass small in-memory readers instead of a broker.
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
