"""A consumed Kafka record, read out of the client's `Message` once, safely.

confluent-kafka turns header names into `str` when asked and fails on a name that is
not UTF-8: the first `Message.headers()` raises `SystemError`, and a second call on
the same message returns a broken list that crashes the interpreter on access. Any
producer can write such a name (kcat does), so processors never touch `Message`
directly: `read_record` calls each accessor once, and a part it cannot read is left
out and said so in `unreadable`, for the dead-letter record.

The call goes through `operator.methodcaller` on purpose: once a call site is warm,
CPython 3.11's specialised call skips the check that turns "a result with an exception
set" into `SystemError`, and the broken list comes back with the `UnicodeDecodeError`
still pending, to surface at some later line. The generic call path always checks.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from confluent_kafka import Message

Headers = tuple[tuple[str, bytes], ...]

_HEADERS = operator.methodcaller("headers")


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int
    # Why a part of the record could not be read (its headers are then left empty).
    unreadable: str | None = None

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what the record weighs on a topic."""
        size = len(self.key or b"") + len(self.value or b"")
        for name, value in self.headers:
            size += len(name) + len(value)
        return size

    def key_text(self) -> str | None:
        """The key as UTF-8 text; None when absent or not UTF-8."""
        if self.key is None:
            return None
        try:
            return self.key.decode()
        except UnicodeDecodeError:
            return None

    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


REASON_CHARS = 2_000


def dead_letter_headers(
    topic: str, partition: int, offset: int, reason: str, unreadable: str | None
) -> list[tuple[str, bytes]]:
    """The headers a dead-letter record adds to the original's: why, and where from."""
    if len(reason) > REASON_CHARS:
        reason = f"{reason[:REASON_CHARS]}..."
    headers = [
        ("dlq.reason", reason.encode()),
        ("dlq.topic", topic.encode()),
        ("dlq.partition", str(partition).encode()),
        ("dlq.offset", str(offset).encode()),
    ]
    if unreadable is not None:
        headers.append(("dlq.unreadable", unreadable.encode()))
    return headers


def read_record(message: Message) -> ConsumedRecord:
    """The record in `message`, which must not be an error event (`message.error()`)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("read_record takes a record, not an error event")
    unreadable: str | None = None
    headers: Headers = ()
    try:
        raw = _HEADERS(message)
    except Exception as exc:  # whatever the client raises, the record is kept
        unreadable = (
            "its headers cannot be read: a header name is not valid UTF-8 "
            f"({type(exc).__name__} from the client)"
        )
    else:
        if raw:
            pairs = raw.items() if isinstance(raw, dict) else raw
            # A header without value arrives as None: kept as b"".
            headers = tuple(
                (name, value if isinstance(value, bytes) else (value or "").encode())
                for name, value in pairs
            )
    return ConsumedRecord(
        topic,
        partition,
        offset,
        message.key(),
        message.value(),
        headers,
        message.timestamp()[1],
        unreadable,
    )
