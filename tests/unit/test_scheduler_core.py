"""The scheduler's decisions, without a broker, on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.limits import LimitRule, RulePattern
from pipeline.core.model import (
    AttemptAlive,
    AttemptCompleted,
    AttemptFailed,
    AttemptFenced,
    AttemptSuspended,
    CallCompletion,
    Caller,
    EntryAppended,
    EntryKind,
    Failure,
    HandlerDefinition,
    InvocationRequest,
    JournalEntry,
    OnExhausted,
    ResultStatus,
    RetryPolicy,
    Target,
)
from pipeline.core.scheduler import (
    AppendFence,
    CallCompleted,
    CapacityGranted,
    CompleteCall,
    DeadLetter,
    DecisionContext,
    Dispatch,
    EmitResult,
    Event,
    Ignored,
    InvocationArrived,
    JournalArrived,
    ReleaseCapacity,
    RequestCapacity,
    ResumeRequested,
    SendInvocation,
    TimerDue,
    decide,
)
from pipeline.core.state import Invocation, VirtualQueue

LEASE = 1_000
HEARTBEAT = 300
TARGET = Target("Greeter", "greet")
HANDLER = HandlerDefinition(
    "greet", RetryPolicy(max_attempts=3, initial_interval_ms=100, max_interval_ms=1_000)
)


@dataclass
class Driver:
    """Folds events through `decide` the way the shell does, minus Kafka."""

    handler: HandlerDefinition | None = HANDLER
    now: int = 0
    invocations: dict[str, Invocation] = field(default_factory=dict)
    queues: dict[str, VirtualQueue] = field(default_factory=dict)
    effects: list[object] = field(default_factory=list)
    forgotten: set[str] = field(default_factory=set)
    capped: str | None = None  # the deployment with a cap, when there is one
    rule: LimitRule | None = None  # governing every queue

    def send(self, event: Event, invocation_id: str) -> list[object]:
        invocation = self.invocations.get(invocation_id)
        request = event.request if isinstance(event, InvocationArrived) else None
        queue_id = request or (invocation.request if invocation else None)
        qid = queue_id.queue_id if queue_id is not None else TARGET_QUEUE
        queue = self.queues.get(str(qid), VirtualQueue(qid))
        decision = decide(
            invocation,
            queue,
            event,
            DecisionContext(
                self.now,
                self.handler,
                LEASE,
                0.5,
                rule=self.rule,
                capped_deployment=self.capped,
                heartbeat_timeout_ms=HEARTBEAT,
            ),
        )
        if decision.forget:
            del self.invocations[invocation_id]
            self.forgotten.add(invocation_id)
        if decision.invocation is not None:
            self.invocations[decision.invocation.id] = decision.invocation
        if decision.queue is not None:
            self.queues[str(decision.queue.id)] = decision.queue
        self.effects += decision.effects
        return list(decision.effects)

    def arrive(self, invocation_id: str) -> list[object]:
        return self.send(InvocationArrived(request(invocation_id)), invocation_id)

    def journal(self, record: object) -> list[object]:
        return self.send(JournalArrived(record), record.invocation_id)  # type: ignore[arg-type, attr-defined]

    def timers(self) -> list[object]:
        out: list[object] = []
        for inv in list(self.invocations.values()):
            if inv.wake_at_ms is not None and inv.wake_at_ms <= self.now:
                out += self.send(TimerDue(inv.id), inv.id)
        return out


def request(invocation_id: str) -> InvocationRequest:
    return InvocationRequest(invocation_id, TARGET, b"{}", created_at_ms=0)


TARGET_QUEUE = request("x").queue_id


def results(effects: list[object]) -> list[EmitResult]:
    return [e for e in effects if isinstance(e, EmitResult)]


def test_arrival_dispatches_attempt_one_with_a_lease() -> None:
    d = Driver(now=50)
    [effect] = d.arrive("a")
    assert isinstance(effect, Dispatch)
    assert effect.order.attempt == 1 and effect.order.journal == ()
    inv = d.invocations["a"]
    assert inv.status is InvocationStatus.RUNNING and inv.wake_at_ms == 50 + LEASE
    assert d.queues[str(TARGET_QUEUE)].running == 1


def test_under_a_scope_budget_an_arrival_waits_for_the_pump() -> None:
    queue = VirtualQueue(TARGET_QUEUE)
    context = DecisionContext(50, Driver().handler, LEASE, 0.5, direct_start=False)
    decision = decide(None, queue, InvocationArrived(request("a")), context)
    assert decision.effects == ()
    assert decision.invocation is not None
    assert decision.invocation.status is InvocationStatus.PENDING
    assert decision.queue is not None and decision.queue.queued == 1


def test_completion_emits_one_result_and_frees_the_slot() -> None:
    d = Driver()
    d.arrive("a")
    [effect] = d.journal(AttemptCompleted("a", 1, b'"hi"'))
    assert isinstance(effect, EmitResult)
    assert effect.result.status is ResultStatus.COMPLETED and effect.result.output == b'"hi"'
    assert d.queues[str(TARGET_QUEUE)].is_idle_at(d.now)
    # A duplicate completion and a duplicate request change nothing.
    assert isinstance(d.journal(AttemptCompleted("a", 1, b"x"))[0], Ignored)
    assert isinstance(d.arrive("a")[0], Ignored)
    assert len(results(d.effects)) == 1


def test_entries_from_a_stale_attempt_are_ignored() -> None:
    d = Driver()
    d.arrive("a")
    entry = JournalEntry(0, EntryKind.RUN, "step")
    d.journal(AttemptFailed("a", 1, Failure("boom")))
    d.now = 10_000
    d.timers()  # backoff over: attempt 2 dispatched
    assert d.invocations["a"].attempt == 2
    assert isinstance(d.journal(EntryAppended("a", 1, entry))[0], Ignored)
    assert d.invocations["a"].journal == ()
    d.journal(EntryAppended("a", 2, entry))
    assert d.invocations["a"].journal == (entry,)


def test_lease_expiry_writes_a_fence_and_acts_only_when_it_is_read_back() -> None:
    d = Driver()
    d.arrive("a")
    d.journal(EntryAppended("a", 1, JournalEntry(0, EntryKind.RUN, "s0")))
    d.now = 5 * LEASE
    [fence] = d.timers()
    assert isinstance(fence, AppendFence) and fence.fence.attempt == 1
    # An entry the old attempt got acknowledged before the fence still counts.
    d.journal(EntryAppended("a", 1, JournalEntry(1, EntryKind.RUN, "s1")))
    assert d.invocations["a"].status is InvocationStatus.RUNNING
    d.journal(fence.fence)
    assert d.invocations["a"].status is InvocationStatus.BACKING_OFF
    # Anything after the fence is rejected.
    assert isinstance(d.journal(AttemptCompleted("a", 1, b"late"))[0], Ignored)
    d.now += 10_000
    [dispatch] = d.timers()
    assert isinstance(dispatch, Dispatch)
    assert dispatch.order.attempt == 2
    assert [e.name for e in dispatch.order.journal] == ["s0", "s1"]


def test_a_taken_attempt_lives_on_heartbeats_and_is_fenced_soon_after_they_stop() -> None:
    d = Driver()
    d.arrive("a")
    assert d.invocations["a"].wake_at_ms == LEASE  # waiting to be taken
    d.now = 100
    d.journal(AttemptAlive("a", 1))  # taken: from now on, the heartbeat timeout
    assert d.invocations["a"].wake_at_ms == 100 + HEARTBEAT
    for _ in range(10):
        d.now += HEARTBEAT - 1
        assert d.timers() == []
        d.journal(AttemptAlive("a", 1))
    assert d.invocations["a"].status is InvocationStatus.RUNNING
    d.now += HEARTBEAT
    [fence] = d.timers()
    assert isinstance(fence, AppendFence)
    assert "no heartbeat for 300 ms" in fence.fence.reason
    # A heartbeat after the fence was written renews nothing, and one of an old
    # attempt is ignored.
    d.journal(AttemptAlive("a", 1))
    assert d.invocations["a"].wake_at_ms is None
    d.journal(fence.fence)
    assert isinstance(d.journal(AttemptAlive("a", 1))[0], Ignored)


def test_retries_exhausted_fail_with_the_last_error() -> None:
    d = Driver()
    d.arrive("a")
    for attempt in (1, 2, 3):
        d.journal(AttemptFailed("a", attempt, Failure(f"boom {attempt}")))
        d.now += 10_000
        d.timers()
    [result] = results(d.effects)
    assert result.result.status is ResultStatus.FAILED
    assert result.result.attempts == 3
    assert result.result.failure == Failure("boom 3")


def test_terminal_failure_fails_at_once() -> None:
    d = Driver()
    d.arrive("a")
    d.journal(AttemptFailed("a", 1, Failure("no", "TerminalError", terminal=True)))
    [result] = results(d.effects)
    assert result.result.attempts == 1 and d.invocations["a"].status is InvocationStatus.FAILED


def test_pause_policy_pauses_and_resume_runs_the_next_attempt() -> None:
    d = Driver(handler=HandlerDefinition("greet", RetryPolicy(1, on_exhausted=OnExhausted.PAUSE)))
    d.arrive("a")
    d.journal(AttemptFailed("a", 1, Failure("boom")))
    assert d.invocations["a"].status is InvocationStatus.PAUSED
    assert results(d.effects) == []
    [dispatch] = d.send(ResumeRequested("a"), "a")
    assert isinstance(dispatch, Dispatch) and dispatch.order.attempt == 2


def test_unknown_handler_is_dead_lettered_with_a_failed_result() -> None:
    d = Driver(handler=None)
    effects = d.arrive("a")
    assert isinstance(effects[0], DeadLetter) and "Greeter/greet" in effects[0].reason
    assert results(effects)[0].result.status is ResultStatus.FAILED


def test_a_finished_invocation_is_forgotten_after_its_retention() -> None:
    d = Driver()
    d.arrive("a")
    d.journal(AttemptCompleted("a", 1, b"1"))
    assert d.invocations["a"].wake_at_ms == DecisionContext(0, None, LEASE, 0).retention_ms
    assert isinstance(d.arrive("a")[0], Ignored)  # a duplicate within the window
    d.now = d.invocations["a"].wake_at_ms or 0
    d.timers()
    assert "a" not in d.invocations
    assert isinstance(d.arrive("a")[0], Dispatch)  # past the window: a new invocation


def test_retry_after_overrides_backoff() -> None:
    d = Driver()
    d.arrive("a")
    d.journal(AttemptFailed("a", 1, Failure("429"), retry_after_ms=7_000))
    assert d.invocations["a"].wake_at_ms == 7_000


# -- properties ---------------------------------------------------------------------

ids = st.sampled_from(["a", "b", "c", "d"])
actions = st.one_of(
    st.tuples(st.just("arrive"), ids),
    st.tuples(st.just("entry"), ids, st.integers(0, 4), st.integers(0, 3)),
    st.tuples(st.just("complete"), ids, st.integers(0, 4)),
    st.tuples(st.just("fail"), ids, st.integers(0, 4), st.booleans()),
    st.tuples(st.just("fence"), ids, st.integers(0, 4)),
    st.tuples(st.just("alive"), ids, st.integers(0, 4)),
    st.tuples(st.just("tick"), st.integers(0, 3 * LEASE)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(actions, max_size=60))
def test_invariants_hold_for_any_event_sequence(steps: list[tuple[object, ...]]) -> None:
    d = Driver()
    for step in steps:
        kind = step[0]
        if kind == "arrive":
            d.arrive(str(step[1]))
        elif kind == "entry":
            _, i, attempt, index = step
            d.journal(
                EntryAppended(str(i), int(attempt), JournalEntry(int(index), EntryKind.RUN, "s"))
            )  # type: ignore[call-overload]
        elif kind == "complete":
            d.journal(AttemptCompleted(str(step[1]), int(step[2]), b"ok"))  # type: ignore[call-overload]
        elif kind == "fail":
            d.journal(
                AttemptFailed(str(step[1]), int(step[2]), Failure("x", terminal=bool(step[3])))
            )  # type: ignore[call-overload]
        elif kind == "fence":
            d.journal(AttemptFenced(str(step[1]), int(step[2]), "test"))  # type: ignore[call-overload]
        elif kind == "alive":
            d.journal(AttemptAlive(str(step[1]), int(step[2])))  # type: ignore[call-overload]
        else:
            d.now += int(step[1])  # type: ignore[call-overload]
            d.timers()

        # Exactly one result per finished invocation, none for unfinished ones.
        emitted = [e.result.invocation_id for e in results(d.effects)]
        assert len(emitted) == len(set(emitted))
        finished = {i for i, inv in d.invocations.items() if inv.status.is_final}
        assert set(emitted) == finished | d.forgotten
        # The queue's counts are a fold of the invocations' statuses.
        queue = d.queues.get(str(TARGET_QUEUE), VirtualQueue(TARGET_QUEUE))
        statuses = [inv.status for inv in d.invocations.values()]
        assert queue.running == statuses.count(InvocationStatus.RUNNING)
        assert queue.queued == statuses.count(InvocationStatus.PENDING)
        # Journals are gap-free: entry i sits at index i.
        for inv in d.invocations.values():
            assert [e.index for e in inv.journal] == list(range(len(inv.journal)))
            assert inv.attempt <= HANDLER.retry.max_attempts


def test_under_a_deployment_cap_an_admitted_invocation_awaits_a_unit() -> None:
    d = Driver(now=50, capped="Greeter")
    [effect] = d.arrive("a")
    assert effect == RequestCapacity("Greeter")
    inv = d.invocations["a"]
    assert inv.status is InvocationStatus.AWAITING_CAPACITY and inv.attempt == 0
    assert inv.deployment == "Greeter" and inv.awaiting_since_ms == 50
    assert inv.wake_at_ms is None  # no lease before the attempt starts
    queue = d.queues[str(TARGET_QUEUE)]
    # It holds its queue's slot from admission on.
    assert (queue.queued, queue.running, queue.awaiting_capacity) == (0, 1, 1)


def test_a_granted_unit_starts_the_attempt_and_its_end_gives_the_unit_back() -> None:
    d = Driver(now=50, capped="Greeter")
    d.arrive("a")
    d.now = 80
    [dispatch] = d.send(CapacityGranted("a", "Greeter"), "a")
    assert isinstance(dispatch, Dispatch) and dispatch.order.attempt == 1
    inv = d.invocations["a"]
    assert inv.status is InvocationStatus.RUNNING and inv.wake_at_ms == 80 + LEASE
    assert inv.deployment == "Greeter" and inv.awaiting_since_ms is None
    queue = d.queues[str(TARGET_QUEUE)]
    assert (queue.running, queue.awaiting_capacity) == (1, 0)
    effects = d.journal(AttemptCompleted("a", 1, b"1"))
    assert effects[0] == ReleaseCapacity("Greeter") and isinstance(effects[1], EmitResult)
    assert d.invocations["a"].deployment is None


def test_a_failed_or_fenced_attempt_gives_its_unit_back_and_the_retry_asks_again() -> None:
    d = Driver(capped="Greeter")
    d.arrive("a")
    d.send(CapacityGranted("a", "Greeter"), "a")
    failed = d.journal(AttemptFailed("a", 1, Failure("boom", "RuntimeError")))
    assert failed == [ReleaseCapacity("Greeter")]
    assert d.invocations["a"].status is InvocationStatus.BACKING_OFF
    d.now = 10_000
    assert d.timers() == [RequestCapacity("Greeter")]
    d.send(CapacityGranted("a", "Greeter"), "a")
    d.now += LEASE
    [fence] = d.timers()
    assert isinstance(fence, AppendFence)
    assert d.journal(fence.fence) == [ReleaseCapacity("Greeter")]


def test_a_unit_no_awaiting_invocation_takes_goes_back() -> None:
    d = Driver()
    d.arrive("a")  # running without a cap
    effects = d.send(CapacityGranted("a", "Greeter"), "a")
    assert ReleaseCapacity("Greeter") in effects
    assert not any(isinstance(e, Dispatch) for e in effects)


def test_without_a_cap_an_attempt_holds_no_unit() -> None:
    d = Driver()
    d.arrive("a")
    assert d.invocations["a"].deployment is None
    assert d.journal(AttemptCompleted("a", 1, b"1"))[0].__class__ is EmitResult


def call_entry(index: int = 0) -> JournalEntry:
    return JournalEntry(index, EntryKind.CALL, "Callee/work", value=b"<request bytes>")


def suspend_on_a_call(d: Driver) -> None:
    d.arrive("a")
    assert d.journal(EntryAppended("a", 1, call_entry())) == [SendInvocation(b"<request bytes>")]
    d.journal(AttemptSuspended("a", 1, 0))


def test_a_call_is_sent_and_kept_without_its_request_until_the_result_is_in() -> None:
    d = Driver()
    suspend_on_a_call(d)
    inv = d.invocations["a"]
    assert inv.journal[0].is_pending_call
    assert inv.status is InvocationStatus.SUSPENDED and inv.awaiting_call == 0
    assert inv.wake_at_ms is None  # no lease, no timer: it waits for the result alone
    assert d.queues[str(TARGET_QUEUE)].running == 0  # the slot is free for others


def test_the_result_completes_the_entry_and_a_new_attempt_replays_it() -> None:
    d = Driver()
    suspend_on_a_call(d)
    [dispatch] = d.send(CallCompleted(CallCompletion("a", 0, output=b"42")), "a")
    assert isinstance(dispatch, Dispatch) and dispatch.order.attempt == 2
    assert dispatch.order.journal[0].value == b"42"
    assert d.invocations["a"].status is InvocationStatus.RUNNING
    # A second copy of the same completion changes nothing.
    assert isinstance(d.send(CallCompleted(CallCompletion("a", 0, b"7")), "a")[0], Ignored)


def test_a_result_that_comes_before_the_suspension_wakes_it_at_once() -> None:
    d = Driver()
    d.arrive("a")
    d.journal(EntryAppended("a", 1, call_entry()))
    assert d.send(CallCompleted(CallCompletion("a", 0, output=b"1")), "a") == []
    [dispatch] = d.journal(AttemptSuspended("a", 1, 0))
    assert isinstance(dispatch, Dispatch) and dispatch.order.attempt == 2


def test_a_suspended_invocation_waits_for_its_queue_again_unless_it_holds_its_slot() -> None:
    one_at_a_time = LimitRule("one", RulePattern.parse("*"), concurrency=1)
    d = Driver(rule=one_at_a_time)
    suspend_on_a_call(d)
    assert isinstance(d.arrive("b")[0], Dispatch)  # the freed slot went to b
    assert d.send(CallCompleted(CallCompletion("a", 0, b"1")), "a") == []
    assert d.invocations["a"].status is InvocationStatus.PENDING

    held = LimitRule("one", RulePattern.parse("*"), concurrency=1, hold_while_suspended=True)
    d = Driver(rule=held)
    suspend_on_a_call(d)
    assert d.invocations["a"].holds_slot
    assert d.arrive("b") == []  # the slot is still a's
    [dispatch] = d.send(CallCompleted(CallCompletion("a", 0, b"1")), "a")
    assert isinstance(dispatch, Dispatch) and dispatch.order.request.id == "a"
    assert d.queues[str(TARGET_QUEUE)].running == 1


def test_suspending_gives_the_deployment_unit_back_and_waking_asks_again() -> None:
    d = Driver(capped="Greeter")
    d.arrive("a")
    d.send(CapacityGranted("a", "Greeter"), "a")
    d.journal(EntryAppended("a", 1, call_entry()))
    assert d.journal(AttemptSuspended("a", 1, 0)) == [ReleaseCapacity("Greeter")]
    assert d.send(CallCompleted(CallCompletion("a", 0, b"1")), "a") == [RequestCapacity("Greeter")]


def test_a_callee_that_ends_completes_its_caller() -> None:
    d = Driver()
    caller = Caller("parent", "parent-key", 3)
    d.send(InvocationArrived(replace(request("child"), caller=caller)), "child")
    effects = d.journal(AttemptCompleted("child", 1, b'"done"'))
    assert CompleteCall(caller, CallCompletion("parent", 3, b'"done"', None)) in effects
    d.send(InvocationArrived(replace(request("child-2"), caller=caller)), "child-2")
    effects = d.journal(AttemptFailed("child-2", 1, Failure("no", "ValueError", terminal=True)))
    [complete] = [e for e in effects if isinstance(e, CompleteCall)]
    assert complete.completion.failure is not None and complete.completion.output is None


def test_suspending_on_an_entry_that_is_no_call_fails_the_attempt() -> None:
    d = Driver()
    d.arrive("a")
    d.journal(EntryAppended("a", 1, JournalEntry(0, EntryKind.RUN, "step", value=b"1")))
    d.journal(AttemptSuspended("a", 1, 0))
    inv = d.invocations["a"]
    assert inv.status is InvocationStatus.BACKING_OFF
    assert inv.last_failure is not None and inv.last_failure.error_type == "InvalidSuspension"


@pytest.mark.parametrize(
    ("target", "keyed", "says"),
    [
        (Target("Greeter", "greet", key="k1"), False, "Greeter is not a keyed service"),
        (Target("Counter", "add"), True, "Counter is a keyed service: call Counter/<key>/add"),
    ],
)
def test_a_target_whose_key_does_not_fit_its_service_fails_naming_the_problem(
    target: Target, keyed: bool, says: str
) -> None:
    arrived = InvocationArrived(InvocationRequest("a", target, b"{}", created_at_ms=0))
    context = DecisionContext(0, HANDLER, LEASE, 0.5, service_keyed=keyed)
    decision = decide(None, VirtualQueue(arrived.request.queue_id), arrived, context)
    (emitted,) = results(list(decision.effects))
    assert emitted.result.status is ResultStatus.FAILED
    failure = emitted.result.failure
    assert failure is not None and failure.error_type == "InvalidTarget" and failure.terminal
    assert says in failure.message
    assert not any(isinstance(e, Dispatch) for e in decision.effects)
