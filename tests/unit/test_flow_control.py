"""Virtual-queue flow control in the pure scheduler core, on a fake clock.

The driver mirrors the shell: events go through `decide`, then waiting queues are
pumped: while `admission` lets the head start, the head (lowest priority number, then
lowest sequence) gets `Admitted`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.admission import Blocked, Blocker, admission
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.limits import LimitRule, RulePattern
from pipeline.core.model import (
    AttemptCompleted,
    AttemptFailed,
    Failure,
    HandlerDefinition,
    InvocationRequest,
    QueueId,
    ResultStatus,
    Target,
)
from pipeline.core.scheduler import (
    Admitted,
    DecisionContext,
    Dispatch,
    EmitResult,
    Event,
    InvocationArrived,
    JournalArrived,
    decide,
)
from pipeline.core.state import Invocation, VirtualQueue

HANDLER = HandlerDefinition("h")
TARGET = Target("S", "h")


def request(invocation_id: str, key: str = "k", priority: int = 5) -> InvocationRequest:
    return InvocationRequest(
        invocation_id, TARGET, b"", 0, scope="acme", limit_key=key, priority=priority
    )


@dataclass
class Driver:
    rule: LimitRule | None
    now: int = 0
    invocations: dict[str, Invocation] = field(default_factory=dict)
    queues: dict[QueueId, VirtualQueue] = field(default_factory=dict)
    starts: list[tuple[int, Invocation]] = field(default_factory=list)
    results: list[EmitResult] = field(default_factory=list)
    clock: int = 0  # counts events, to order arrivals and starts
    arrived_at: dict[str, int] = field(default_factory=dict)
    started_at: dict[str, int] = field(default_factory=dict)

    def send(self, event: Event, invocation_id: str, queue_id: QueueId) -> None:
        queue = self.queues.get(queue_id, VirtualQueue(queue_id))
        ctx = DecisionContext(self.now, HANDLER, 60_000, 0.5, rule=self.rule)
        decision = decide(self.invocations.get(invocation_id), queue, event, ctx)
        self.clock += 1
        if isinstance(event, InvocationArrived):
            self.arrived_at[invocation_id] = self.clock
        if decision.invocation is not None:
            self.invocations[invocation_id] = decision.invocation
        if decision.queue is not None:
            self.queues[queue_id] = decision.queue
        for effect in decision.effects:
            if isinstance(effect, Dispatch):
                self.starts.append((self.now, self.invocations[invocation_id]))
                self.started_at[invocation_id] = self.clock
            if isinstance(effect, EmitResult):
                self.results.append(effect)

    def arrive(self, req: InvocationRequest) -> None:
        self.send(InvocationArrived(req), req.id, req.queue_id)
        self.pump()

    def complete(self, invocation_id: str) -> None:
        inv = self.invocations[invocation_id]
        record = AttemptCompleted(invocation_id, inv.attempt, b"1")
        self.send(JournalArrived(record), invocation_id, inv.queue_id)
        self.pump()

    def pump(self) -> None:
        for queue_id, queue in list(self.queues.items()):
            while queue.queued and not isinstance(admission(queue, self.rule, self.now), Blocked):
                head = min(
                    (
                        i
                        for i in self.invocations.values()
                        if i.status is InvocationStatus.PENDING and i.queue_id == queue_id
                    ),
                    key=lambda i: (i.request.priority, i.queue_seq),
                )
                self.send(Admitted(head.id), head.id, queue_id)
                queue = self.queues[queue_id]

    def running(self, queue_id: QueueId) -> int:
        return sum(
            1
            for i in self.invocations.values()
            if i.status is InvocationStatus.RUNNING and i.queue_id == queue_id
        )


def rule(**limits: object) -> LimitRule:
    return LimitRule("r", RulePattern.parse("acme/*"), **limits)  # type: ignore[arg-type]


def test_concurrency_holds_the_rest_and_a_completion_starts_the_next() -> None:
    d = Driver(rule(concurrency=2))
    for i in range(5):
        d.arrive(request(f"i{i}"))
    assert [inv.id for _, inv in d.starts] == ["i0", "i1"]
    queue = d.queues[QueueId("acme", "k")]
    assert (queue.running, queue.queued) == (2, 3)
    assert admission(queue, d.rule, d.now) == Blocked(Blocker.CONCURRENCY, rule_id="r")
    d.complete("i0")
    assert [inv.id for _, inv in d.starts] == ["i0", "i1", "i2"]


def test_each_limit_key_has_its_own_budget() -> None:
    d = Driver(rule(concurrency=1))
    d.arrive(request("a1", "a"))
    d.arrive(request("b1", "b"))
    d.arrive(request("a2", "a"))
    assert [inv.id for _, inv in d.starts] == ["a1", "b1"]


def test_lower_priority_number_starts_first_then_fifo() -> None:
    d = Driver(rule(concurrency=1))
    d.arrive(request("first"))
    for name, priority in [("p5a", 5), ("p1", 1), ("p5b", 5), ("p0", 0)]:
        d.arrive(request(name, priority=priority))
    for name in ["first", "p0", "p1", "p5a"]:
        d.complete(name)
    assert [inv.id for _, inv in d.starts] == ["first", "p0", "p1", "p5a", "p5b"]


def test_a_full_queue_rejects_with_a_clear_error() -> None:
    d = Driver(rule(concurrency=1, max_queued=1))
    d.arrive(request("run"))
    d.arrive(request("wait"))
    d.arrive(request("over"))
    [rejected] = d.results
    assert rejected.result.status is ResultStatus.FAILED
    assert rejected.result.failure is not None
    assert "acme/k is full" in rejected.result.failure.message
    assert "max_queued=1" in rejected.result.failure.message


def test_a_paused_queue_starts_nothing_until_unpaused() -> None:
    d = Driver(rule(paused=True))
    d.arrive(request("a"))
    assert d.starts == []
    d.rule = rule(paused=False)
    d.pump()
    assert [inv.id for _, inv in d.starts] == ["a"]


def test_rate_limit_spaces_starts_after_the_burst() -> None:
    d = Driver(rule(rate_per_s=10, burst=2))
    for i in range(4):
        d.arrive(request(f"i{i}"))
    assert len(d.starts) == 2
    verdict = admission(d.queues[QueueId("acme", "k")], d.rule, d.now)
    assert isinstance(verdict, Blocked) and verdict.blocker is Blocker.RATE
    d.now = verdict.until_ms or 0
    d.pump()
    assert len(d.starts) == 3


steps = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.sampled_from("ab"), st.integers(0, 9)),
        st.tuples(st.just("complete"), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.integers(0, 500)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(
    steps=steps,
    concurrency=st.integers(1, 3),
    rate=st.none() | st.floats(1, 50),
    burst=st.integers(1, 4),
)
def test_flow_control_invariants(
    steps: list[tuple[object, ...]], concurrency: int, rate: float | None, burst: int
) -> None:
    d = Driver(rule(concurrency=concurrency, rate_per_s=rate, burst=burst))
    n = 0
    for step in steps:
        if step[0] == "arrive":
            d.arrive(request(f"i{n}", str(step[1]), priority=int(step[2])))  # type: ignore[call-overload]
            n += 1
        elif step[0] == "complete":
            running = sorted(
                i.id for i in d.invocations.values() if i.status is InvocationStatus.RUNNING
            )
            if running:
                d.complete(running[int(step[1]) % len(running)])  # type: ignore[call-overload]
        else:
            d.now += int(step[1])  # type: ignore[call-overload]
            d.pump()
        for key in "ab":
            queue_id = QueueId("acme", key)
            # Never more than `concurrency` running per queue.
            assert d.running(queue_id) <= concurrency
            # No queue starves while it could start: the pump leaves no admissible head.
            queue = d.queues.get(queue_id)
            if queue is not None and queue.queued:
                assert isinstance(admission(queue, d.rule, d.now), Blocked)

    for key in "ab":
        starts = [(t, inv) for t, inv in d.starts if inv.request.limit_key == key]
        # Within a queue, a start never jumps an invocation that was waiting then with
        # a lower priority number, nor an earlier one of the same priority.
        for _, started in starts:
            when = d.started_at[started.id]
            for other in d.invocations.values():
                if other.request.limit_key != key or other.id == started.id:
                    continue
                waiting = d.arrived_at[other.id] < when < d.started_at.get(other.id, when + 1)
                if waiting:
                    mine = (started.request.priority, started.queue_seq)
                    assert mine < (other.request.priority, other.queue_seq)
        # Starts in any window of length T are at most rate*T + burst.
        if rate is not None:
            times = [t for t, _ in starts]
            for i, first in enumerate(times):
                for window in (1, 100, 1000):
                    within = sum(1 for s in times[i:] if s < first + window)
                    assert within <= rate * window / 1000 + burst


def test_rate_limited_downstream_holds_the_whole_queue_until_retry_after() -> None:
    d = Driver(None)
    d.arrive(request("a"))
    failure = Failure("429 from the payment API", "RateLimited")
    held = AttemptFailed("a", 1, failure, retry_after_ms=5_000, hold_queue=True)
    d.send(JournalArrived(held), "a", QueueId("acme", "k"))
    d.arrive(request("b"))
    queue = d.queues[QueueId("acme", "k")]
    assert admission(queue, None, d.now) == Blocked(Blocker.PAUSED_UNTIL, until_ms=5_000)
    assert [inv.id for _, inv in d.starts] == ["a"]
    d.now = 5_000
    d.pump()
    assert [inv.id for _, inv in d.starts] == ["a", "b"]
