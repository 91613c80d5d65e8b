"""Decisions that keep one bad invocation from stopping its partition: payload limits,
values out of range from the wire, and abandoning an invocation from any status."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.codec.records import WireCodec
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.limits import LimitRule, RulePattern
from pipeline.core.model import (
    AttemptCompleted,
    AttemptFailed,
    CallCompletion,
    Caller,
    EntryAppended,
    EntryKind,
    Failure,
    HandlerDefinition,
    InvocationRequest,
    JournalEntry,
    ResultStatus,
    RetryPolicy,
    Target,
)
from pipeline.core.payload import (
    PayloadLimits,
    cut_failure,
    entry_bytes,
    request_bytes,
    request_too_large,
)
from pipeline.core.scheduler import (
    CompleteCall,
    DecisionContext,
    EmitResult,
    JournalArrived,
    ReleaseCapacity,
    abandon,
    decide,
)
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.errors import ValidationError
from pipeline.settings import Settings

LIMITS = PayloadLimits(
    max_request_bytes=1_000,
    max_output_bytes=1_000,
    max_journal_bytes=2_000,
    max_failure_message_chars=100,
)
NOW = 1_000_000
REQUEST = InvocationRequest("inv-1", Target("Svc", "h"), b'"in"', created_at_ms=0)
HANDLER = HandlerDefinition("h", RetryPolicy(max_attempts=5))


def _context(**changes: object) -> DecisionContext:
    context = DecisionContext(NOW, HANDLER, 60_000, 0.5, limits=LIMITS)
    return replace(context, **changes)  # type: ignore[arg-type]


def _running(journal: tuple[JournalEntry, ...] = ()) -> tuple[Invocation, VirtualQueue]:
    invocation = Invocation(
        REQUEST, InvocationStatus.RUNNING, attempt=1, journal=journal, wake_at_ms=NOW + 1
    )
    return invocation, VirtualQueue(REQUEST.queue_id, running=1)


def _failure(decision_invocation: Invocation | None) -> Failure:
    assert decision_invocation is not None
    assert decision_invocation.status is InvocationStatus.FAILED
    assert decision_invocation.last_failure is not None
    return decision_invocation.last_failure


def test_an_output_over_the_limit_fails_the_invocation_and_names_the_limit() -> None:
    invocation, queue = _running()
    record = AttemptCompleted("inv-1", 1, b"o" * 1_001)
    decision = decide(invocation, queue, JournalArrived(record), _context())
    failure = _failure(decision.invocation)
    assert failure.error_type == "PayloadTooLarge" and failure.terminal
    assert "1001 bytes" in failure.message and "max_output_bytes=1000" in failure.message
    assert decision.invocation is not None and decision.invocation.output is None
    assert decision.queue is not None and decision.queue.running == 0
    result = next(e.result for e in decision.effects if isinstance(e, EmitResult))
    assert result.status is ResultStatus.FAILED and result.output is None


def test_a_step_that_grows_the_journal_over_the_limit_fails_the_invocation() -> None:
    first = JournalEntry(0, EntryKind.RUN, "a", value=b"v" * 1_500)
    invocation, queue = _running((first,))
    second = EntryAppended("inv-1", 1, JournalEntry(1, EntryKind.RUN, "b", value=b"w" * 600))
    decision = decide(invocation, queue, JournalArrived(second), _context())
    failure = _failure(decision.invocation)
    assert "max_journal_bytes=2000" in failure.message and failure.error_type == "PayloadTooLarge"
    assert decision.invocation is not None and len(decision.invocation.journal) == 1


def test_a_journaled_send_larger_than_any_request_fails_the_sender() -> None:
    invocation, queue = _running()
    send = EntryAppended("inv-1", 1, JournalEntry(0, EntryKind.SEND, "s", value=b"r" * 1_200))
    decision = decide(invocation, queue, JournalArrived(send), _context())
    assert "max_request_bytes=1000" in _failure(decision.invocation).message
    assert not any(type(e).__name__ == "SendInvocation" for e in decision.effects)


def test_a_callee_output_the_caller_cannot_keep_completes_the_call_as_failed() -> None:
    call = JournalEntry(0, EntryKind.CALL, "c")
    big = JournalEntry(1, EntryKind.RUN, "r", value=b"v" * 1_500)
    invocation = Invocation(REQUEST, InvocationStatus.RUNNING, attempt=1, journal=(call, big))
    queue = VirtualQueue(REQUEST.queue_id, running=1)
    from pipeline.core.scheduler import CallCompleted

    completion = CallCompletion("inv-1", 0, output=b"o" * 900)
    decision = decide(invocation, queue, CallCompleted(completion), _context())
    assert decision.invocation is not None
    completed = decision.invocation.journal[0]
    assert completed.value is None and completed.failure is not None
    assert "max_journal_bytes" in completed.failure.message


def test_failure_messages_are_cut_not_refused() -> None:
    invocation, queue = _running()
    record = AttemptFailed("inv-1", 1, Failure("m" * 10_000, "Boom", terminal=True))
    decision = decide(invocation, queue, JournalArrived(record), _context())
    message = _failure(decision.invocation).message
    assert message.startswith("m" * 100) and "9900 characters cut" in message
    assert len(cut_failure(Failure("x" * 5), LIMITS).message) == 5


def test_a_retry_after_from_the_wire_is_bounded() -> None:
    invocation, queue = _running()
    record = AttemptFailed("inv-1", 1, Failure("slow down"), retry_after_ms=2**62, hold_queue=True)
    decision = decide(invocation, queue, JournalArrived(record), _context())
    assert decision.invocation is not None and decision.invocation.wake_at_ms is not None
    # Stays a valid Avro long and a valid timer row, far in the future as asked.
    assert NOW < decision.invocation.wake_at_ms < 2**53
    assert decision.queue is not None and decision.queue.paused_until_ms is not None
    assert decision.queue.paused_until_ms < 2**53
    WireCodec().encode_invocation_state(decision.invocation)


def test_a_rate_too_small_to_schedule_is_refused() -> None:
    with pytest.raises(ValidationError, match="rate"):
        LimitRule("slow", RulePattern.parse("a/*"), rate_per_s=1e-300)


def test_request_size_counts_input_headers_and_ids() -> None:
    request = replace(REQUEST, headers=(("h", b"x" * 100),))
    assert request_bytes(request) >= len(request.input) + 101 + len(request.id)
    assert request_too_large(request, LIMITS) is None
    assert request_too_large(request, LIMITS, record_bytes=1_001) is not None
    huge = replace(REQUEST, input=b"i" * 1_000)
    reason = request_too_large(huge, LIMITS)
    assert reason is not None and "max_request_bytes=1000" in reason


@given(st.binary(max_size=2_000), st.text(max_size=50))
def test_entry_size_is_never_below_its_encoded_size(value: bytes, name: str) -> None:
    entry = JournalEntry(3, EntryKind.RUN, name or "n", value=value)
    encoded = WireCodec().encode_journal(EntryAppended("i", 1, entry))
    assert entry_bytes(entry) >= len(encoded) - len("i") - 16


def test_settings_refuse_limits_that_do_not_fit_a_record() -> None:
    with pytest.raises(ValueError, match="max_record_bytes"):
        Settings(max_record_bytes=512 * 1024)
    assert Settings().payload_limits.record_bytes_needed <= Settings().max_record_bytes


_CALLER = Caller("parent", "parent", 2)


@pytest.mark.parametrize(
    ("status", "changes", "running_after", "queued_after"),
    [
        (InvocationStatus.PENDING, {}, 1, 0),
        (InvocationStatus.AWAITING_CAPACITY, {"deployment": "Svc"}, 0, 1),
        (InvocationStatus.RUNNING, {"deployment": "Svc"}, 0, 1),
        (InvocationStatus.BACKING_OFF, {}, 1, 1),
        (InvocationStatus.PAUSED, {}, 1, 1),
        (InvocationStatus.SUSPENDED, {"holds_slot": True, "awaiting_call": 0}, 0, 1),
        (InvocationStatus.SUSPENDED, {"awaiting_call": 0}, 1, 1),
    ],
)
def test_abandon_fails_from_any_status_and_gives_back_what_it_held(
    status: InvocationStatus, changes: dict[str, object], running_after: int, queued_after: int
) -> None:
    request = replace(REQUEST, caller=_CALLER)
    invocation = replace(Invocation(request, status, attempt=1), **changes)  # type: ignore[arg-type]
    queue = VirtualQueue(request.queue_id, queued=1, running=1, awaiting_capacity=1)
    decision = abandon(invocation, queue, "the scheduler failed: boom", _context())
    failed = decision.invocation
    assert failed is not None and failed.status is InvocationStatus.FAILED
    assert failed.last_failure == Failure("the scheduler failed: boom", "InternalError", True)
    assert failed.wake_at_ms == NOW + _context().retention_ms  # remembered, then forgotten
    assert decision.queue is not None
    assert (decision.queue.running, decision.queue.queued) == (running_after, queued_after)
    released = [e for e in decision.effects if isinstance(e, ReleaseCapacity)]
    assert len(released) == (1 if status is InvocationStatus.RUNNING else 0)
    assert any(isinstance(e, EmitResult) for e in decision.effects)
    assert any(isinstance(e, CompleteCall) for e in decision.effects)  # the caller hears


def test_abandon_leaves_finished_invocations_alone() -> None:
    done = Invocation(REQUEST, InvocationStatus.COMPLETED, output=b"1")
    decision = abandon(done, VirtualQueue(REQUEST.queue_id), "x", _context())
    assert decision.invocation is None and decision.queue is None
