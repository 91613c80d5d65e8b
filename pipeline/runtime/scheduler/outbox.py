"""What the scheduler writes inside its transaction, checked before Kafka sees it.

A record Kafka refuses for its content (too large, invalid) fails the delivery, and
with it the whole transaction, on every retry of the batch: a crash loop. So every
record is measured against the limits the topics were created with before it is
produced, and Kafka's refusals that are about content (not about the broker being
away) are told apart from the rest, so that the processor can isolate the record that
caused them instead of retrying the batch for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message

from pipeline.errors import PipelineError
from pipeline.kafka.errors import is_fatal
from pipeline.runtime.consumed import REASON_CHARS, ConsumedRecord, dead_letter_headers
from pipeline.runtime.scheduler.transactions import Transactions

log = logging.getLogger(__name__)

OutHeaders = list[tuple[str, str | bytes | None]]
Delivered = Callable[[KafkaError | None, Message], None]

# Refusals about the record itself: retrying the same record can never succeed.
CONTENT_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.POLICY_VIOLATION,
    }
)


class RecordTooLarge(PipelineError):
    """A record the scheduler derived exceeds what its topic takes; names both sizes."""


class ContentRefused(PipelineError):
    """Kafka refused a record of the transaction for its content."""


class Outbox:
    """Produces into the open transaction; remembers content refusals per transaction."""

    def __init__(
        self,
        transactions: Transactions,
        *,
        max_record_bytes: int,
        dead_letter_topic: str,
        dead_letter_record_bytes: int,
    ) -> None:
        self._transactions = transactions
        self._max_record_bytes = max_record_bytes
        self._dead_letter_topic = dead_letter_topic
        self._dead_letter_record_bytes = dead_letter_record_bytes
        self._refused: list[str] = []
        self.dead_lettered = 0

    def begin(self) -> None:
        self._refused.clear()
        self._transactions.begin()

    def refusal(self) -> str | None:
        """Why Kafka refused a record of this transaction for its content, if it did.

        Serves the delivery reports first: they arrive only when polled.
        """
        self._transactions.producer.poll(0)
        return "; ".join(self._refused) if self._refused else None

    def send(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: OutHeaders | None = None,
        *,
        timestamp_ms: int = 0,
        on_delivery: Delivered | None = None,
    ) -> None:
        size = _size(key, value, headers)
        if size > self._max_record_bytes:
            raise RecordTooLarge(
                f"a record for {topic}[{partition}] would be {size} bytes, over "
                f"max_record_bytes={self._max_record_bytes}"
            )
        self._produce(topic, partition, key, value, headers, timestamp_ms, on_delivery)

    def dead_letter(
        self, record: ConsumedRecord, reason: str, origin: Origin | None = None
    ) -> None:
        """Keep `record` on the dead-letter topic with the reason and its coordinates:
        where it first arrived, when it was forwarded here (`origin`)."""
        topic, partition, offset, key = (
            (record.topic, record.partition, record.offset, record.key)
            if origin is None
            else (origin.topic, origin.partition, origin.offset, origin.key)
        )
        log.warning("dead-lettering %s[%d]@%d: %s", topic, partition, offset, reason)
        about: OutHeaders = [
            *dead_letter_headers(topic, partition, offset, reason, record.unreadable)
        ]
        own: OutHeaders = [h for h in record.headers if not h[0].startswith(ORIGIN_HEADER)]
        value = record.value
        if _size(key, value, [*own, *about]) > self._dead_letter_record_bytes:
            # Larger than the topic takes: keep the coordinates, which find the original.
            about.append(("dlq.dropped", f"value and headers of {record.size} bytes".encode()))
            own, value = [], None
        self.dead_lettered += 1
        self._produce(self._dead_letter_topic, 0, key, value, [*own, *about], 0, None)

    def dead_letter_event(self, invocation_id: str, reason: str) -> None:
        """A dead-letter record for an event no input record carried (a timer, an
        admission): keyed by the invocation, with the reason."""
        log.warning("dead-lettering an event of invocation %r: %s", invocation_id, reason)
        headers: OutHeaders = [("dlq.reason", reason[:REASON_CHARS].encode())]
        self.dead_lettered += 1
        self._produce(self._dead_letter_topic, 0, invocation_id.encode(), None, headers, 0, None)

    def _produce(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: OutHeaders | None,
        timestamp_ms: int,
        on_delivery: Delivered | None,
    ) -> None:
        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None and error.code() in CONTENT_ERRORS:
                self._refused.append(f"{topic}[{partition}]: {error.str()}")
            if on_delivery is not None:
                on_delivery(error, message)

        producer = self._transactions.producer
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    key,
                    partition=partition,
                    headers=headers,
                    timestamp=timestamp_ms,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports to make room.
                producer.poll(0.05)
            except KafkaException as exc:
                error = exc.args[0]
                if is_fatal(error) or error.retriable():
                    raise
                # Refused before it left: about this record (its size, its partition).
                raise ContentRefused(f"{topic}[{partition}]: {error.str()}") from exc


ORIGIN_HEADER = "pipeline.origin"
ORIGIN_KEY_HEADER = "pipeline.origin.key"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a forwarded request first arrived: its coordinates and its own key."""

    topic: str
    partition: int
    offset: int
    key: bytes | None

    def headers(self) -> OutHeaders:
        headers: OutHeaders = [
            (ORIGIN_HEADER, f"{self.topic}:{self.partition}:{self.offset}".encode())
        ]
        if self.key is not None:
            headers.append((ORIGIN_KEY_HEADER, self.key))
        return headers

    @classmethod
    def of(cls, record: ConsumedRecord) -> Origin | None:
        """The origin a forwarding scheduler wrote into `record`, if any."""
        where: bytes | None = None
        key: bytes | None = None
        for name, value in record.headers:
            if name == ORIGIN_HEADER:
                where = value
            elif name == ORIGIN_KEY_HEADER:
                key = value
        if where is None:
            return None
        topic, _, rest = where.decode(errors="replace").rpartition(":")
        topic, _, partition = topic.rpartition(":")
        if not topic or not partition.isdigit() or not rest.isdigit():
            return None
        return cls(topic, int(partition), int(rest), key)


def _size(key: bytes | None, value: bytes | None, headers: OutHeaders | None) -> int:
    size = len(key or b"") + len(value or b"")
    for name, header in headers or ():
        size += len(name) + (len(header) if header is not None else 0)
    return size
