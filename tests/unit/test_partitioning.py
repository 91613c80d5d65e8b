"""Partitioning must agree with Kafka's Java producer, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.partitioning import murmur2, partition_for


# Expected values from Kafka's own UtilsTest (signed Java ints).
@pytest.mark.parametrize(
    ("key", "java"),
    [
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ],
)
def test_murmur2_matches_java(key: str, java: int) -> None:
    assert murmur2(key.encode()) == java & 0xFFFFFFFF


@given(st.text(), st.integers(1, 1000))
def test_partition_is_in_range_and_stable(key: str, partitions: int) -> None:
    partition = partition_for(key, partitions)
    assert 0 <= partition < partitions
    assert partition == partition_for(key, partitions)
