"""Who holds a queue slot and a deployment unit, under any mix of arrivals, grants,
calls, suspensions, completions and failures: a model-based property of the core."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.admission import Admit, admission
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.limits import LimitRule, RulePattern
from pipeline.core.model import (
    AttemptCompleted,
    AttemptFailed,
    AttemptSuspended,
    CallCompletion,
    EntryAppended,
    EntryKind,
    Failure,
    HandlerDefinition,
    InvocationRequest,
    JournalEntry,
    RetryPolicy,
    Target,
)
from pipeline.core.scheduler import (
    Admitted,
    CallCompleted,
    CapacityGranted,
    DecisionContext,
    Event,
    InvocationArrived,
    JournalArrived,
    ReleaseCapacity,
    RequestCapacity,
    decide,
)
from pipeline.core.state import Invocation, VirtualQueue

TARGET = Target("Pool", "work")
HANDLER = HandlerDefinition("work", RetryPolicy(max_attempts=1))
S = InvocationStatus


@dataclass
class Shell:
    """The scheduler shell in miniature: one queue, one deployment with a cap of 1."""

    rule: LimitRule
    queue: VirtualQueue = field(default_factory=lambda: VirtualQueue(request("x").queue_id))
    invocations: dict[str, Invocation] = field(default_factory=dict)
    asked: int = 0  # units requested and not granted yet
    granted: int = 0
    released: int = 0
    now: int = 0

    def send(self, invocation_id: str, event: Event) -> None:
        ctx = DecisionContext(
            self.now, HANDLER, 60_000, 0.5, rule=self.rule, capped_deployment="Pool"
        )
        decision = decide(self.invocations.get(invocation_id), self.queue, event, ctx)
        if decision.invocation is not None:
            self.invocations[invocation_id] = decision.invocation
        if decision.queue is not None:
            self.queue = decision.queue
        for effect in decision.effects:
            if isinstance(effect, RequestCapacity):
                self.asked += 1
            elif isinstance(effect, ReleaseCapacity):
                self.released += 1

    def in_status(self, *statuses: InvocationStatus) -> list[Invocation]:
        return [i for i in self.invocations.values() if i.status in statuses]

    def pump(self) -> None:
        while self.queue.queued and isinstance(admission(self.queue, self.rule, self.now), Admit):
            head = min(self.in_status(S.PENDING), key=lambda i: i.queue_seq)
            self.send(head.id, Admitted(head.id))

    def grant(self) -> None:
        """The home grants one unit under the cap of 1; the oldest awaiting takes it."""
        if self.asked and self.granted - self.released < 1:
            self.asked -= 1
            self.granted += 1
            oldest = min(
                self.in_status(S.AWAITING_CAPACITY), key=lambda i: i.awaiting_since_ms or 0
            )
            self.send(oldest.id, CapacityGranted(oldest.id, "Pool"))


def request(invocation_id: str) -> InvocationRequest:
    return InvocationRequest(invocation_id, TARGET, b"", 0, scope="acme", limit_key="k")


operations = st.lists(
    st.tuples(
        st.sampled_from(["arrive", "grant", "call", "complete", "fail", "result"]),
        st.integers(0, 5),
    ),
    max_size=60,
)


@given(operations, st.booleans())
def test_slots_and_units_are_held_by_exactly_who_should_hold_them(
    ops: list[tuple[str, int]], hold: bool
) -> None:
    rule = LimitRule("two", RulePattern.parse("acme/*"), concurrency=2, hold_while_suspended=hold)
    shell = Shell(rule)
    for op, n in ops:
        shell.now += 10
        running = shell.in_status(S.RUNNING)
        pick = running[n % len(running)] if running else None
        if op == "arrive":
            shell.send(
                f"i{len(shell.invocations)}",
                InvocationArrived(request(f"i{len(shell.invocations)}")),
            )
        elif op == "grant":
            shell.grant()
        elif op == "call" and pick is not None:
            entry = JournalEntry(len(pick.journal), EntryKind.CALL, "Other/h", value=b"req")
            shell.send(pick.id, JournalArrived(EntryAppended(pick.id, pick.attempt, entry)))
            shell.send(
                pick.id, JournalArrived(AttemptSuspended(pick.id, pick.attempt, entry.index))
            )
        elif op == "complete" and pick is not None:
            shell.send(pick.id, JournalArrived(AttemptCompleted(pick.id, pick.attempt, b"")))
        elif op == "fail" and pick is not None:
            failure = Failure("boom", terminal=True)
            shell.send(pick.id, JournalArrived(AttemptFailed(pick.id, pick.attempt, failure)))
        elif op == "result":
            suspended = shell.in_status(S.SUSPENDED)
            if suspended:
                woken = suspended[n % len(suspended)]
                completion = CallCompletion(woken.id, woken.awaiting_call or 0, b"1")
                shell.send(woken.id, CallCompleted(completion))
        shell.pump()

        holding = [i for i in shell.in_status(S.SUSPENDED) if i.holds_slot]
        awaiting = shell.in_status(S.AWAITING_CAPACITY)
        queue = shell.queue
        assert queue.queued == len(shell.in_status(S.PENDING))
        assert queue.awaiting_capacity == len(awaiting)
        assert queue.running == len(shell.in_status(S.RUNNING)) + len(awaiting) + len(holding)
        assert queue.running <= 2
        assert not holding or hold
        # Units: every one granted is held by a running attempt or was given back, and
        # every awaiting invocation asked for exactly one.
        with_unit = [i for i in shell.in_status(S.RUNNING) if i.deployment == "Pool"]
        assert shell.granted - shell.released == len(with_unit) <= 1
        assert shell.asked == len(awaiting)
