"""The worker's lease view is never later than the scheduler's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.lease import AttemptLease


def test_expiry_counts_timeout_minus_margin() -> None:
    lease = AttemptLease(granted_at_ms=1_000, timeout_ms=5_000, margin_ms=500)
    assert lease.held_at(5_499) and not lease.held_at(5_500)
    assert lease.renewed(3_000).expires_at_ms == 7_500
    assert lease.renewed(500).expires_at_ms == 5_500  # never moves backwards


@given(
    dispatched=st.integers(0, 10_000),
    sends=st.lists(st.tuples(st.integers(0, 3_000), st.integers(0, 3_000)), max_size=20),
    timeout=st.integers(100, 10_000),
    margin=st.integers(0, 1_000),
)
def test_worker_never_holds_a_lease_the_scheduler_has_let_expire(
    dispatched: int, sends: list[tuple[int, int]], timeout: int, margin: int
) -> None:
    worker = AttemptLease(dispatched, timeout, margin)
    scheduler_deadline = dispatched + timeout
    now = dispatched
    for gap, processing_delay in sends:
        now += gap
        worker = worker.renewed(now)
        # The scheduler renews when it processes the entry, at or after it was sent.
        scheduler_deadline = max(scheduler_deadline, now + processing_delay + timeout)
        assert worker.expires_at_ms <= scheduler_deadline
