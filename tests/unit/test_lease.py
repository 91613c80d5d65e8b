"""The worker's lease view never outlasts the scheduler's lease: a report the worker
saw acknowledged while it held the lease is in the journal before any fence."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.lease import AttemptLease


def test_dispatch_lease_then_heartbeat_renewals() -> None:
    lease = AttemptLease.dispatched(
        1_000, lease_timeout_ms=60_000, heartbeat_timeout_ms=3_000, margin_ms=500
    )
    assert lease.held_at(60_499) and not lease.held_at(60_500)
    # The first report may shorten the lease: the scheduler renews it for 3 s only.
    reporting = lease.reporting(2_000)
    assert reporting.expires_at_ms == 4_500
    assert reporting.renewed(2_000).expires_at_ms == 4_500
    assert reporting.renewed(3_000).expires_at_ms == 5_500
    assert reporting.renewed(3_000).renewed(1_000).expires_at_ms == 5_500  # never backwards


@given(
    dispatched=st.integers(0, 10_000),
    lease_timeout=st.integers(100, 60_000),
    margin=st.integers(0, 1_000),
    heartbeat_extra=st.integers(1, 5_000),
    # gap before the send, delay until the ack, and where in between the scheduler
    # reads it: a caught-up scheduler has read a record by the time its ack is back.
    reports=st.lists(
        st.tuples(st.integers(0, 4_000), st.integers(0, 3_000), st.floats(0, 1)), max_size=25
    ),
)
def test_no_report_acknowledged_in_the_lease_lands_after_a_fence(
    dispatched: int,
    lease_timeout: int,
    margin: int,
    heartbeat_extra: int,
    reports: list[tuple[int, int, float]],
) -> None:
    heartbeat_timeout = margin + heartbeat_extra
    lease = AttemptLease.dispatched(
        dispatched,
        lease_timeout_ms=lease_timeout,
        heartbeat_timeout_ms=heartbeat_timeout,
        margin_ms=margin,
    )
    now = dispatched
    read_at: list[float] = []
    acknowledged_in_lease: list[int] = []
    for gap, ack_delay, where in reports:
        sent = now + gap
        if not lease.held_at(sent):
            break  # the worker sends no report once it no longer holds the lease
        lease = lease.reporting(sent)
        acked = sent + ack_delay
        read_at.append(sent + where * ack_delay)
        if lease.held_at(acked):
            acknowledged_in_lease.append(acked)
            lease = lease.renewed(sent)
        now = acked

    # The scheduler: the dispatch lease, then each report read renews from when it is read.
    deadline: float = dispatched + lease_timeout
    for read in read_at:
        if read >= deadline:
            break
        deadline = read + heartbeat_timeout
    fence_at = deadline
    assert all(acked < fence_at for acked in acknowledged_in_lease)
