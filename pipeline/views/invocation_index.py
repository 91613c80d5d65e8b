"""The indexes the Admin API's replica keeps of invocations, and how a list query uses them.

Pure: the rows an invocation puts in each index, the entry that remembers them (so that
an update deletes exactly the rows the last version wrote, without decoding it), the
query and its cursor. The replica (`scheduler_state`) stores them in RocksDB:

    n {id}                        -> entry: the invocation's index rows, as JSON
    xs {status} 0x00 {id}         invocations by status
    xv {service} 0x00 {id}        by service
    xc {scope} 0x00 {id}          by scope ("" for none)
    w {queue} 0x00 {prio}{seq}{id}
                                  pending invocations in admission order
    p {partition} a {deployment} 0x00 {prio}{since}{id}
                                  invocations awaiting a deployment's capacity, per
                                  changelog partition (the order each partition grants in)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.codec.state_keys import InvocationFacets, awaiting_order, waiting_order
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.state import Invocation
from pipeline.errors import ValidationError

ENTRY = b"n"
BY_STATUS = b"xs"
BY_SERVICE = b"xv"
BY_SCOPE = b"xc"
WAITING = b"w"
AWAITING = b"p"

MAX_PAGE = 1_000
DEFAULT_PAGE = 100
# Index rows one page may look at before it answers with what it found: a filter that
# matches little must not make one request read the whole store.
MAX_SCANNED = 20_000


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What an invocation was indexed under, as of the last version the replica read."""

    status: str
    service: str
    scope: str
    waiting: bytes | None = None
    awaiting: bytes | None = None

    def rows(self, invocation_id: str) -> frozenset[bytes]:
        tail = b"\x00" + invocation_id.encode()
        rows = {
            BY_STATUS + self.status.encode() + tail,
            BY_SERVICE + self.service.encode() + tail,
            BY_SCOPE + self.scope.encode() + tail,
        }
        if self.waiting is not None:
            rows.add(self.waiting + invocation_id.encode())
        if self.awaiting is not None:
            rows.add(self.awaiting)
        return frozenset(rows)

    def encode(self) -> bytes:
        return json.dumps(
            [
                self.status,
                self.service,
                self.scope,
                None if self.waiting is None else self.waiting.hex(),
                None if self.awaiting is None else self.awaiting.hex(),
            ],
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, value: bytes) -> IndexEntry:
        status, service, scope, waiting, awaiting = json.loads(value)
        return cls(
            status,
            service,
            scope,
            None if waiting is None else bytes.fromhex(waiting),
            None if awaiting is None else bytes.fromhex(awaiting),
        )


def index_entry(invocation: InvocationFacets, partition: int) -> IndexEntry:
    """The index rows of `invocation`, read from changelog partition `partition`."""
    awaiting = awaiting_order(invocation)
    return IndexEntry(
        status=invocation.status.value,
        service=invocation.service,
        scope=invocation.scope or "",
        waiting=waiting_order(invocation),
        awaiting=None if awaiting is None else AWAITING + partition.to_bytes(2, "big") + awaiting,
    )


def awaiting_prefix(entry_awaiting: bytes) -> bytes:
    """The rows of the same partition and deployment as this awaiting row."""
    return entry_awaiting[: entry_awaiting.index(b"\x00", len(AWAITING) + 2) + 1]


def waiting_prefix(entry_waiting: bytes) -> bytes:
    """The rows of the same queue as this waiting row."""
    return entry_waiting[: entry_waiting.index(b"\x00") + 1]


@dataclass(frozen=True, slots=True)
class InvocationQuery:
    """A page of `GET /invocations`: invocations in id order, after `after`, that have
    every attribute given; `scope` "" means invocations sent without a scope."""

    status: InvocationStatus | None = None
    service: str | None = None
    scope: str | None = None
    limit: int = DEFAULT_PAGE
    after: bytes | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE:
            raise ValidationError(f"limit {self.limit} is not in 1..{MAX_PAGE}")

    def index_prefix(self) -> bytes:
        """The index to walk: the one of a given attribute, else every entry."""
        if self.status is not None:
            return BY_STATUS + self.status.value.encode() + b"\x00"
        if self.service is not None:
            return BY_SERVICE + self.service.encode() + b"\x00"
        if self.scope is not None:
            return BY_SCOPE + self.scope.encode() + b"\x00"
        return ENTRY

    def matches(self, entry: IndexEntry) -> bool:
        return (
            (self.status is None or entry.status == self.status.value)
            and (self.service is None or entry.service == self.service)
            and (self.scope is None or entry.scope == self.scope)
        )


@dataclass(frozen=True, slots=True)
class InvocationPage:
    invocations: tuple[Invocation, ...]
    next_cursor: str | None


def encode_cursor(after: bytes) -> str:
    return after.hex()


def decode_cursor(cursor: str) -> bytes:
    """The id a cursor continues after, as bytes: any even run of hex digits is a
    position in id order. `ValidationError` for anything else."""
    try:
        return bytes.fromhex(cursor)
    except ValueError:
        raise ValidationError(
            f"cursor {cursor[:64]!r} is not one this API gave: pass next_cursor from the "
            "previous page unchanged, or leave it out for the first page"
        ) from None
