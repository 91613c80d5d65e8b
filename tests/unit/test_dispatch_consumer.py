"""The worker's dispatch consumer replaces itself after a fatal error, as librdkafka
reports one to a consumer: a record whose error code is `_FATAL` and whose `fatal()`
flag is False (seen when a broker restart fenced the static member)."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest
from confluent_kafka import KafkaError

from pipeline.runtime import dispatch_consumer
from pipeline.runtime.dispatch_consumer import DispatchConsumer


class FatalRecord:
    def error(self) -> KafkaError:
        return KafkaError(KafkaError._FATAL, "Static consumer fenced by other consumer")


class FencedConsumer:
    """Hands out one fatal error, then nothing, for ever: what a fenced client does."""

    made: ClassVar[list[FencedConsumer]] = []

    def __init__(self, config: object) -> None:
        self.closed = False
        self._fatal = len(FencedConsumer.made) == 0
        FencedConsumer.made.append(self)

    def subscribe(self, topics: object, **callbacks: object) -> None:
        pass

    def poll(self, timeout: float) -> FatalRecord | None:
        if self._fatal:
            self._fatal = False
            return FatalRecord()
        return None

    def consume(self, count: int, timeout: float) -> list[object]:
        return []

    def close(self) -> None:
        self.closed = True


def test_a_fatal_error_record_makes_the_consumer_join_again_with_a_new_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not KafkaError(KafkaError._FATAL).fatal(), "the flag this test is about"
    FencedConsumer.made = []
    monkeypatch.setattr(dispatch_consumer, "Consumer", FencedConsumer)

    async def run() -> None:
        consumer = DispatchConsumer({"group.id": "g"}, "dispatch")
        await consumer.open()
        batch = await consumer.poll_batch(10, 0.01)
        assert batch.records == []
        await consumer.close()

    asyncio.run(run())

    assert len(FencedConsumer.made) == 2, "no new client after the fatal error"
    assert FencedConsumer.made[0].closed
