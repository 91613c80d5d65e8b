"""Backoff after a failed attempt: bounded, for any policy the wire can carry."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.model import RetryPolicy
from pipeline.core.retry import backoff_ms


@given(
    initial=st.integers(0, 10**9),
    extra=st.integers(0, 10**9),
    multiplier=st.floats(1.0, 1e308),
    attempt=st.integers(0, 10**6),
    jitter=st.floats(0.0, 0.999999),
)
def test_backoff_stays_within_the_policy_for_any_attempt(
    initial: int, extra: int, multiplier: float, attempt: int, jitter: float
) -> None:
    # Attempt 1025 of the default multiplier once raised OverflowError inside `decide`,
    # which stopped the scheduler's partition on every restart.
    policy = RetryPolicy(
        max_attempts=10**7,
        initial_interval_ms=initial,
        max_interval_ms=initial + extra,
        multiplier=multiplier,
    )
    delay = backoff_ms(policy, attempt, jitter)
    assert 0 <= delay <= policy.max_interval_ms


def test_backoff_after_many_attempts_is_the_maximum() -> None:
    policy = RetryPolicy(max_attempts=100_000, initial_interval_ms=100, max_interval_ms=30_000)
    assert 15_000 <= backoff_ms(policy, 5_000, 0.5) <= 30_000
