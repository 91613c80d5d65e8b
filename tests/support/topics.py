"""Read what the runtime wrote: every result and dead-letter record of a test's topics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer

from pipeline.codec.records import WireCodec
from pipeline.core.model import InvocationResult
from pipeline.runtime.consumed import read_record
from pipeline.settings import Settings


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    @property
    def reason(self) -> str:
        return self.headers["dlq.reason"].decode()

    @property
    def coordinates(self) -> tuple[int, int]:
        return int(self.headers["dlq.partition"]), int(self.headers["dlq.offset"])


class TopicReader:
    """A read_committed consumer of one topic from its start, polled on demand."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self._consumer.subscribe([topic])
        self.messages: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []

    def poll(self) -> None:
        for message in self._consumer.consume(500, timeout=0.2):
            if message.error() is None:
                record = read_record(message)
                self.messages.append((record.key, record.value, dict(record.headers)))

    def close(self) -> None:
        self._consumer.close()


class Outcomes:
    """Results and dead letters of one test's runtime, read as they are committed."""

    def __init__(self, settings: Settings) -> None:
        self._codec = WireCodec()
        self._results = TopicReader(settings, settings.topic_names.results)
        self._dead = TopicReader(settings, settings.topic_names.dead_letter)

    def results(self) -> list[InvocationResult]:
        self._results.poll()
        return [self._codec.decode_result(v or b"") for _, v, _ in self._results.messages]

    def dead_letters(self) -> list[DeadLetter]:
        self._dead.poll()
        return [DeadLetter(k, v, h) for k, v, h in self._dead.messages]

    def wait_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.2)

    def close(self) -> None:
        self._results.close()
        self._dead.close()
