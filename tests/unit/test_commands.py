"""The command producer's failure paths, without a broker: nothing listens on port 1."""

from __future__ import annotations

import time

import pytest

from pipeline.codec.records import WireCodec
from pipeline.errors import RetryableError, ValidationError
from pipeline.kafka.config import ClusterConfig
from pipeline.runtime.commands import InvocationCommandProducer
from topics import TopicNames

UNREACHABLE = "127.0.0.1:1"


def test_unacknowledged_resume_is_retryable_and_close_does_not_hang() -> None:
    producer = InvocationCommandProducer(
        ClusterConfig(UNREACHABLE), TopicNames("t."), 4, WireCodec(), ack_timeout_s=0.3
    )

    with pytest.raises(RetryableError, match=r"resume of 'inv-1' not acknowledged .* 0\.3 s"):
        producer.resume_id("inv-1", "inv-1")

    started = time.monotonic()
    producer.close(timeout_s=0.2)
    producer.close()  # a second close is a no-op
    assert time.monotonic() - started < 5


def test_empty_bootstrap_is_refused_with_what_to_set() -> None:
    with pytest.raises(ValidationError, match="KAFKA_BOOTSTRAP_SERVERS"):
        InvocationCommandProducer(ClusterConfig(""), TopicNames(), 4, WireCodec())
