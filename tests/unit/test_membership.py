from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.membership import (
    KAFKA_DEFAULT_MIN_SESSION_TIMEOUT_MS,
    PREFERRED_SESSION_TIMEOUT_MS,
    session_timeout_ms,
)


def test_three_seconds_where_the_cluster_accepts_it() -> None:
    assert session_timeout_ms(1_000, 1_800_000) == PREFERRED_SESSION_TIMEOUT_MS == 3_000


def test_a_cluster_with_default_settings_gets_its_floor() -> None:
    assert session_timeout_ms(6_000, 1_800_000) == 6_000
    assert session_timeout_ms(None, None) == KAFKA_DEFAULT_MIN_SESSION_TIMEOUT_MS


@given(st.integers(1, 10**7), st.integers(1, 10**7))
def test_always_within_what_the_cluster_accepts(floor: int, ceiling: int) -> None:
    low, high = min(floor, ceiling), max(floor, ceiling)
    chosen = session_timeout_ms(low, high)
    assert low <= chosen <= high
    assert chosen == min(max(PREFERRED_SESSION_TIMEOUT_MS, low), high)
