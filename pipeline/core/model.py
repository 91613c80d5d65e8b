"""Frozen domain types shared by every processor; the Avro codec maps these to the wire."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from pipeline.errors import ValidationError

Headers = tuple[tuple[str, bytes], ...]

SCOPE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
LIMIT_KEY_PART_PATTERN = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
# Counts kept in Avro `int` fields (limits, caps): a reader could not decode a larger one.
MAX_AVRO_INT = 2**31 - 1
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")

DEFAULT_PRIORITY = 5


@dataclass(frozen=True, slots=True)
class Target:
    """Which handler runs: `Service/handler`, or `Service/key/handler` for keyed services."""

    service: str
    handler: str
    key: str | None = None

    def __post_init__(self) -> None:
        for what, value in (("service", self.service), ("handler", self.handler)):
            if not NAME_PATTERN.fullmatch(value):
                raise ValidationError(
                    f"{what} name {value!r} is not valid: use 1-128 of [A-Za-z0-9_.-], "
                    "starting with a letter or _"
                )
        if self.key is not None and (not self.key or "/" in self.key):
            raise ValidationError(f"object key {self.key!r} must be non-empty and contain no '/'")

    def __str__(self) -> str:
        if self.key is None:
            return f"{self.service}/{self.handler}"
        return f"{self.service}/{self.key}/{self.handler}"

    @classmethod
    def parse(cls, text: str) -> Target:
        parts = text.split("/")
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        if len(parts) == 3:
            return cls(parts[0], parts[2], key=parts[1])
        raise ValidationError(
            f"target {text!r} is not valid: write Service/handler or Service/key/handler"
        )


@dataclass(frozen=True, slots=True)
class QueueId:
    """Identity of a virtual queue: (scope, limit key).

    An invocation without a scope lands in its service's default queue, written with an
    empty scope and the service name as limit key, which no user scope can collide with.
    """

    scope: str
    limit_key: str

    def __str__(self) -> str:
        return f"{self.scope}/{self.limit_key}"

    @classmethod
    def service_default(cls, service: str) -> QueueId:
        return cls("", service)

    @classmethod
    def of(cls, scope: str | None, limit_key: str | None, service: str) -> QueueId:
        """The queue a request with this scope and limit key waits in."""
        if scope is None:
            return cls.service_default(service)
        return cls(scope, limit_key or service)

    @classmethod
    def parse(cls, text: str) -> QueueId:
        scope, sep, limit_key = text.partition("/")
        if not sep or not limit_key:
            raise ValidationError(f"queue id {text!r} is not valid: write scope/limitKey")
        return cls(scope, limit_key)


def validate_scope(scope: str) -> str:
    if not SCOPE_PATTERN.fullmatch(scope):
        raise ValidationError(f"scope {scope!r} is not valid: use 1-64 of [A-Za-z0-9_.-]")
    return scope


def validate_limit_key(limit_key: str) -> str:
    parts = limit_key.split("/")
    if len(parts) > 2 or not all(LIMIT_KEY_PART_PATTERN.fullmatch(p) for p in parts):
        raise ValidationError(
            f"limit key {limit_key!r} is not valid: write L1 or L1/L2, "
            "each part 1-128 of [A-Za-z0-9_.:@-]"
        )
    return limit_key


def validate_priority(priority: int) -> int:
    if isinstance(priority, bool) or not 0 <= priority <= 9:
        raise ValidationError(f"priority {priority} is not valid: use 0 (first) to 9 (last)")
    return priority


@dataclass(frozen=True, slots=True)
class Caller:
    """The invocation that awaits this one's result (`ctx.service_call`): its id, its
    partition key (where the result goes) and the index of its call's journal entry."""

    invocation_id: str
    partition_key: str
    entry_index: int


@dataclass(frozen=True, slots=True)
class InvocationRequest:
    """A request to run a handler once, as it arrives on the `invocations` topic."""

    id: str
    target: Target
    input: bytes
    created_at_ms: int
    headers: Headers = ()
    idempotency_key: str | None = None
    scope: str | None = None
    limit_key: str | None = None
    priority: int = DEFAULT_PRIORITY
    caller: Caller | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValidationError("invocation id must not be empty")
        if self.scope is not None:
            validate_scope(self.scope)
        if self.limit_key is not None:
            if self.scope is None:
                raise ValidationError(
                    f"limit key {self.limit_key!r} needs a scope: set scope as well"
                )
            validate_limit_key(self.limit_key)
        validate_priority(self.priority)
        if self.idempotency_key == "":
            raise ValidationError("idempotency key must not be empty: omit it or give a value")

    @property
    def partition_key(self) -> str:
        """Scope first so that every limit of a scope is decided on one partition."""
        if self.scope is not None:
            return self.scope
        if self.target.key is not None:
            return f"{self.target.service}/{self.target.key}"
        return self.id

    @property
    def queue_id(self) -> QueueId:
        return QueueId.of(self.scope, self.limit_key, self.target.service)

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class ResumeInvocation:
    """An operator's command to resume a paused invocation.

    It travels on `invocations` rather than a topic of its own so that it is ordered
    with the invocation's other input on the partition that owns its state.
    """

    invocation_id: str
    requested_at_ms: int

    def __post_init__(self) -> None:
        if not self.invocation_id:
            raise ValidationError("invocation id must not be empty")


class CapacityKind(StrEnum):
    DEMAND = "demand"  # to the home: `partition` asks for `count` more units
    GRANT = "grant"  # to `partition`: `count` units for its awaiting invocations
    RELEASE = "release"  # to the home: `count` units came back


@dataclass(frozen=True, slots=True)
class CapacityMessage:
    """Scheduler to scheduler, about a deployment's cap (`pipeline.core.deployment`).

    Like a resume command it travels on `invocations`, on the partition that must act
    on it: the deployment's home for demands and releases, the asking one for grants.
    """

    kind: CapacityKind
    deployment: str
    partition: int
    count: int


class EntryKind(StrEnum):
    RUN = "run"
    SEND = "send"  # a one-way invocation made by the handler; its value is the request
    # A call whose result the handler awaits. The worker journals the request as its
    # value; the scheduler sends it, keeps the entry without a value, and completes the
    # entry with the callee's output or failure when the callee ends.
    CALL = "call"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an attempt or invocation failed; `terminal` means no retry can help. `code`
    is the one a handler gave its `TerminalError`, kept through replay and into the
    result."""

    message: str
    error_type: str = "Error"
    terminal: bool = False
    code: int | None = None


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One durable step of an invocation; replay checks index, kind and name."""

    index: int
    kind: EntryKind
    name: str
    value: bytes | None = None
    failure: Failure | None = None

    @property
    def is_pending_call(self) -> bool:
        """A call whose callee has not ended yet."""
        return self.kind is EntryKind.CALL and self.value is None and self.failure is None


# What workers (and the scheduler's fences) append to the `journal` topic.


@dataclass(frozen=True, slots=True)
class EntryAppended:
    invocation_id: str
    attempt: int
    entry: JournalEntry


@dataclass(frozen=True, slots=True)
class AttemptCompleted:
    invocation_id: str
    attempt: int
    output: bytes


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    invocation_id: str
    attempt: int
    failure: Failure
    retry_after_ms: int | None = None
    hold_queue: bool = False  # RateLimited: the whole queue waits out retry_after_ms


@dataclass(frozen=True, slots=True)
class AttemptFenced:
    """Written by the scheduler; acted on only when read back, so it orders after every
    entry the fenced attempt had already acknowledged."""

    invocation_id: str
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class AttemptSuspended:
    """The handler awaits the call journaled at `awaiting_index`, which has no result
    yet: the attempt ends without holding a worker, and the invocation resumes (a new
    attempt replaying the journal) once the result is in."""

    invocation_id: str
    attempt: int
    awaiting_index: int


@dataclass(frozen=True, slots=True)
class AttemptAlive:
    """A heartbeat: the worker still runs the attempt. Sent when it takes the dispatch
    and then regularly, so that an attempt whose worker died is fenced within the
    heartbeat timeout instead of the lease a dispatch gets for waiting for a slot."""

    invocation_id: str
    attempt: int


JournalRecord = (
    EntryAppended
    | AttemptCompleted
    | AttemptFailed
    | AttemptFenced
    | AttemptSuspended
    | AttemptAlive
)


@dataclass(frozen=True, slots=True)
class CallCompletion:
    """A callee ended: its output or failure completes its caller's call entry.

    It travels on `invocations`, keyed by the caller's partition key, like a resume.
    """

    invocation_id: str  # the caller
    entry_index: int
    output: bytes | None = None
    failure: Failure | None = None


@dataclass(frozen=True, slots=True)
class DispatchOrder:
    """Scheduler -> worker: run (or resume) this attempt, replaying this journal."""

    request: InvocationRequest
    attempt: int
    journal: tuple[JournalEntry, ...] = ()


class OnExhausted(StrEnum):
    FAIL = "fail"
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 10
    initial_interval_ms: int = 100
    max_interval_ms: int = 30_000
    multiplier: float = 2.0
    on_exhausted: OnExhausted = OnExhausted.FAIL

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValidationError(f"max_attempts {self.max_attempts} must be at least 1")
        if self.initial_interval_ms < 0 or self.max_interval_ms < self.initial_interval_ms:
            raise ValidationError(
                f"retry intervals {self.initial_interval_ms}..{self.max_interval_ms} ms "
                "must satisfy 0 <= initial <= max"
            )
        if not 1.0 <= self.multiplier < float("inf"):
            raise ValidationError(f"retry multiplier {self.multiplier} must be >= 1.0")


@dataclass(frozen=True, slots=True)
class HandlerDefinition:
    name: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True, slots=True)
class ServiceDefinition:
    """What a worker deployment announces on the `services` control topic."""

    name: str
    handlers: tuple[HandlerDefinition, ...]
    keyed: bool = False

    def handler(self, name: str) -> HandlerDefinition | None:
        for handler in self.handlers:
            if handler.name == name:
                return handler
        return None


class ResultStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class InvocationResult:
    """The one final outcome of an invocation, keyed by its id on `results`."""

    invocation_id: str
    target: Target
    status: ResultStatus
    output: bytes | None
    failure: Failure | None
    attempts: int
    created_at_ms: int
    completed_at_ms: int
    first_started_at_ms: int | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """A virtual queue's counts after a change, keyed by queue id on `queue-state`."""

    queue_id: QueueId
    queued: int
    running: int
    updated_at_ms: int
