"""What the scheduler keeps per invocation and per virtual queue, in its changelog."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.model import Failure, InvocationRequest, JournalEntry, QueueId
from pipeline.core.verdict import Blocked


@dataclass(frozen=True, slots=True)
class Invocation:
    """The scheduler's view of one invocation.

    `attempt` is the number of the current (or last) attempt, 0 before the first
    dispatch. `wake_at_ms` is the single timer an invocation can have: the lease of the
    running attempt, the end of a backoff, or, once finished, the end of its retention.
    `fence_requested` marks a lease fence that was written to the journal and is not
    read back yet. `deployment` names the deployment whose capacity the invocation
    awaits (since `awaiting_since_ms`) or its running attempt holds; None otherwise.
    A suspended invocation waits for the result of the call entry `awaiting_call`;
    `holds_slot` says it kept its queue's slot meanwhile (`hold_while_suspended`).
    """

    request: InvocationRequest
    status: InvocationStatus
    attempt: int = 0
    journal: tuple[JournalEntry, ...] = ()
    wake_at_ms: int | None = None
    fence_requested: bool = False
    queue_seq: int = 0
    first_started_at_ms: int | None = None
    finished_at_ms: int | None = None
    last_failure: Failure | None = None
    output: bytes | None = None
    deployment: str | None = None
    awaiting_since_ms: int | None = None
    awaiting_call: int | None = None
    holds_slot: bool = False

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def queue_id(self) -> QueueId:
        return self.request.queue_id

    def evolve(self, **changes: object) -> Invocation:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class VirtualQueue:
    """Counts of one virtual queue; `next_seq` orders entries FIFO within a priority.

    `running` counts every invocation the queue admitted that has not ended, including
    those still awaiting their deployment's capacity (`awaiting_capacity` of them): the
    queue's slot is theirs from admission on. `rate_tat_ms` is the GCRA state of the
    queue's rate limit; `vfinish` its fair-share finish tag within its scope
    (`pipeline.core.fair_share`). A queue with nothing queued or running and no rate
    debt left is dropped from state, so idle queues cost nothing.
    """

    id: QueueId
    queued: int = 0
    running: int = 0
    next_seq: int = 0
    rate_tat_ms: float = 0.0
    paused_until_ms: int | None = None
    vfinish: float = 0.0
    awaiting_capacity: int = 0  # of `running`: admitted, waiting for deployment capacity
    # What the scheduler last found holding the head back; None: it may start, or
    # nothing waits. Written with the state, so that reports restate the decision.
    blocked: Blocked | None = None

    def is_idle_at(self, now_ms: int) -> bool:
        return (
            self.queued == 0
            and self.running == 0
            and self.rate_tat_ms <= now_ms
            and (self.paused_until_ms or 0) <= now_ms
        )
