"""How a handler's exception becomes the journal record of its attempt."""

from __future__ import annotations

from pipeline.core.model import DispatchOrder, InvocationRequest, Target
from pipeline.errors import RateLimited, RetryableError, TerminalError
from pipeline.runtime.invoker import attempt_failed

ORDER = DispatchOrder(InvocationRequest("i", Target("S", "h"), b"", 0), attempt=2)


def test_rate_limited_holds_the_queue_for_retry_after() -> None:
    record = attempt_failed(ORDER, RateLimited("429", retry_after_ms=3_000))
    assert (record.retry_after_ms, record.hold_queue) == (3_000, True)
    assert not record.failure.terminal and record.failure.error_type == "RateLimited"


def test_other_errors_do_not_hold_the_queue() -> None:
    assert not attempt_failed(ORDER, RetryableError("x", retry_after_ms=10)).hold_queue
    assert attempt_failed(ORDER, TerminalError("no")).failure.terminal
    assert attempt_failed(ORDER, ValueError("bad")).failure.message == "ValueError: bad"


def test_a_terminal_errors_code_reaches_the_attempts_record() -> None:
    assert attempt_failed(ORDER, TerminalError("gone", code=410)).failure.code == 410
    assert attempt_failed(ORDER, ValueError("bad")).failure.code is None
