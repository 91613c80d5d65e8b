"""Keys of the scheduler's state: the changelog's, which are contract, and the order keys
of the indexes that the scheduler's store and the Admin API's replica both keep.

Changelog keys are `{family}/{name}`: `i/` an invocation by id, `q/` a virtual queue
(`scope/limitKey`), `s/` a scope's load, `d/` a deployment's load. Every reader of the
changelog parses them here, so that a new family is added in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.model import QueueId
from pipeline.core.state import Invocation
from pipeline.errors import DecodeError


class RowFamily(Enum):
    INVOCATION = "i/"
    QUEUE = "q/"
    SCOPE = "s/"
    DEPLOYMENT = "d/"


_FAMILIES = {family.value: family for family in RowFamily}


def invocation_key(invocation_id: str) -> str:
    return RowFamily.INVOCATION.value + invocation_id


def queue_key(queue_id: QueueId) -> str:
    return RowFamily.QUEUE.value + str(queue_id)


def scope_key(scope: str) -> str:
    return RowFamily.SCOPE.value + scope


def deployment_key(deployment: str) -> str:
    return RowFamily.DEPLOYMENT.value + deployment


def parse_changelog_key(key: str) -> tuple[RowFamily, str]:
    """The family of a changelog key and the name after its prefix."""
    family = _FAMILIES.get(key[:2])
    if family is None:
        raise DecodeError(
            f"changelog key {key!r} is none of i/<invocation id>, q/<queue id>, s/<scope>, "
            "d/<deployment>"
        )
    return family, key[2:]


@dataclass(frozen=True, slots=True)
class InvocationFacets:
    """What an invocation is found and ordered by, without its payloads and journal:
    what indexes need, decoded from a changelog value at a fraction of the full cost."""

    id: str
    status: InvocationStatus
    service: str
    queue_id: QueueId
    scope: str | None
    priority: int
    queue_seq: int
    deployment: str | None
    awaiting_since_ms: int | None

    @classmethod
    def of(cls, invocation: Invocation) -> InvocationFacets:
        request = invocation.request
        return cls(
            id=invocation.id,
            status=invocation.status,
            service=request.target.service,
            queue_id=request.queue_id,
            scope=request.scope,
            priority=request.priority,
            queue_seq=invocation.queue_seq,
            deployment=invocation.deployment,
            awaiting_since_ms=invocation.awaiting_since_ms,
        )


def waiting_order(invocation: InvocationFacets) -> bytes | None:
    """`w{queue}\\0{priority}{queue_seq}`: a pending invocation's place in its queue, in
    the order the scheduler admits; None when it is not pending."""
    if invocation.status is not InvocationStatus.PENDING:
        return None
    return (
        b"w"
        + str(invocation.queue_id).encode()
        + b"\x00"
        + bytes([invocation.priority])
        + invocation.queue_seq.to_bytes(8, "big")
    )


def awaiting_order(invocation: InvocationFacets) -> bytes | None:
    """`a{deployment}\\0{priority}{since}{id}`: an invocation's place among those awaiting
    its deployment's capacity on its partition; None when it awaits none."""
    if invocation.status is not InvocationStatus.AWAITING_CAPACITY or invocation.deployment is None:
        return None
    return (
        b"a"
        + invocation.deployment.encode()
        + b"\x00"
        + bytes([invocation.priority])
        + instant(invocation.awaiting_since_ms or 0)
        + invocation.id.encode()
    )


def instant(at_ms: int) -> bytes:
    """Milliseconds as 8 big-endian bytes, which sort like the number."""
    return min(max(at_ms, 0), 2**64 - 1).to_bytes(8, "big")


def order_prefix(key: bytes) -> bytes:
    """The part of an order key up to and including its `\\0`: the queue's or the
    deployment's whole index."""
    return key[: key.index(b"\x00") + 1]
