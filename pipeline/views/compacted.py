"""The reader under every materialized view: a compacted topic, read to its end and on.

A view reads every partition of its topic with a consumer that is assigned, not
subscribed: each reader needs the whole topic, and a consumer group would split it. It
reads from the beginning, or from where a view kept on disk stopped (`_start_offsets`),
in a background thread, and hands each batch of records to `_fold` (a `None` value is a
tombstone and deletes the key).

Caught up means: every partition has been read up to the end offset it had when the view
started. With `read_committed` that end is the last stable offset, so records of aborted
transactions are never shown and an open transaction does not hold the view back.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from pipeline.errors import DecodeError, NotFoundError, RetryableError
from pipeline.kafka.config import ClientConfig, ClusterConfig

log = logging.getLogger(__name__)

_POLL_BATCH = 500
_POLL_TIMEOUT_S = 0.2
_METADATA_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
# What a partition answers while its leader is being elected, e.g. just after creation.
_LEADER_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})

_V = TypeVar("_V")


def _consumer_config(cluster: ClusterConfig) -> ClientConfig:
    return cluster.client(
        {
            # Required by the client even though the view never joins the group: partitions
            # are assigned by hand and no offset is ever committed.
            "group.id": "pipeline.views.unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # The scheduler writes its changelog in transactions: an aborted batch is not state.
            "isolation.level": "read_committed",
            # End-of-partition events tell the view it reached the end even when the last
            # offsets are transaction markers that no message carries.
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # librdkafka prefetches per partition, up to 100,000 records or 64 MB each by
            # default: far more than a view folds at once, and it grew the Admin API by
            # hundreds of MB while it read a large changelog.
            "queued.min.messages": 5000,
            "queued.max.messages.kbytes": 2048,
        }
    )


@dataclass(frozen=True, slots=True)
class TopicRecord:
    partition: int
    offset: int
    key: str
    value: bytes | None


class CompactedTopicView(ABC):
    """Reads one compacted topic in a thread; subclasses fold the records."""

    def __init__(self, cluster: ClusterConfig, topic: str) -> None:
        self._cluster = cluster
        self._topic = topic
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        # Per partition: the end offset seen at start, and the next offset to read.
        self._targets: dict[int, int] = {}
        self._positions: dict[int, int] = {}

    @property
    def topic(self) -> str:
        return self._topic

    def start(self) -> None:
        """Assign every partition from the beginning and start reading in a thread.

        Raises `NotFoundError` when the topic does not exist, `RetryableError` when the
        broker does not answer in time.
        """
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError(f"view of {self._topic!r} was started before: create a new one")
        consumer = Consumer(_consumer_config(self._cluster))
        try:
            partitions = self._partitions(consumer)
            self._targets = self._end_offsets(consumer, partitions)
            starts = self._start_offsets(self._targets)
            self._positions = {p: starts.get(p, 0) for p in partitions}
            consumer.assign(
                [
                    TopicPartition(self._topic, p, self._positions[p] or OFFSET_BEGINNING)
                    for p in partitions
                ]
            )
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        self._update_caught_up()
        self._thread = threading.Thread(target=self._run, name=f"view:{self._topic}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading and close the consumer; the last state stays readable.

        A view runs once: to read again, create a new one.
        """
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            log.warning("view of %s did not stop within %.0fs", self._topic, _STOP_TIMEOUT_S)

    def wait_caught_up(self, timeout: float) -> bool:
        """True once every partition is read up to its end offset as of `start()`."""
        return self._caught_up.wait(timeout)

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def _partitions(self, consumer: Consumer) -> list[int]:
        try:
            metadata = consumer.list_topics(self._topic, timeout=_METADATA_TIMEOUT_S)
        except KafkaException as exc:
            raise RetryableError(
                f"cannot read metadata of topic {self._topic!r} from "
                f"{self._cluster.describe()}: {exc}; "
                "check that the broker is running and the bootstrap address is right"
            ) from exc
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise NotFoundError(
                f"topic {self._topic!r} does not exist on {self._cluster.describe()}: create the "
                "topic catalogue first (and check the topic prefix)"
            )
        return sorted(topic.partitions)

    def _end_offsets(self, consumer: Consumer, partitions: list[int]) -> dict[int, int]:
        targets: dict[int, int] = {}
        deadline = time.monotonic() + _METADATA_TIMEOUT_S
        for partition in partitions:
            while True:
                try:
                    low, high = consumer.get_watermark_offsets(
                        TopicPartition(self._topic, partition), timeout=_METADATA_TIMEOUT_S
                    )
                    break
                except KafkaException as exc:
                    # A topic created a moment ago may not have elected its leader yet.
                    error = exc.args[0]
                    transient = error.retriable() or error.code() in _LEADER_MOVING
                    if transient and time.monotonic() < deadline:
                        time.sleep(0.1)
                        continue
                    raise RetryableError(
                        f"cannot read end offsets of {self._topic!r} from "
                        f"{self._cluster.describe()}: {exc}"
                    ) from exc
            # An empty partition (high == low) has nothing to wait for.
            targets[partition] = high if high > low else 0
        return targets

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stopping.is_set():
                try:
                    messages = consumer.consume(_POLL_BATCH, _POLL_TIMEOUT_S)
                except KafkaException as exc:
                    log.warning("view of %s: consume failed, retrying: %s", self._topic, exc)
                    self._stopping.wait(1.0)
                    continue
                records = [r for r in map(self._record, messages) if r is not None]
                if records or messages:
                    self._fold_batch(records)
                if not self._caught_up.is_set():
                    self._update_caught_up()
        except Exception:
            # Readers would otherwise see a view that silently stopped moving.
            log.exception("view of %s stopped on an unexpected error", self._topic)
        finally:
            consumer.close()

    def _record(self, message: Message) -> TopicRecord | None:
        partition, offset, error = message.partition(), message.offset(), message.error()
        if partition is None or offset is None:
            log.warning("view of %s: client reported %s", self._topic, error)
            return None
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._advance(partition, offset)
            else:
                log.warning("view of %s: partition %s: %s", self._topic, partition, error)
            return None
        self._advance(partition, offset + 1)
        raw_key = message.key()
        try:
            key = None if raw_key is None else raw_key.decode()
        except UnicodeDecodeError:
            key = None
        if key is None:
            log.warning(
                "view of %s: skipping record with key %r at %s",
                self._topic,
                raw_key,
                _where(partition, offset),
            )
            return None
        return TopicRecord(partition, offset, key, message.value())

    def _fold_batch(self, records: Sequence[TopicRecord]) -> None:
        try:
            self._fold(records)
        except Exception:
            # A store that cannot take the batch: fold record by record so that only
            # the bad ones are lost, each named.
            if len(records) == 1:
                self._skip(records[0])
                return
            for record in records:
                try:
                    self._fold([record])
                except Exception:
                    self._skip(record)

    def _skip(self, record: TopicRecord) -> None:
        log.exception(
            "view of %s: skipping record %r at %s that could not be applied",
            self._topic,
            record.key,
            _where(record.partition, record.offset),
        )

    def _advance(self, partition: int, next_offset: int) -> None:
        if next_offset > self._positions.get(partition, 0):
            self._positions[partition] = next_offset

    def _update_caught_up(self) -> None:
        if all(self._positions.get(p, 0) >= end for p, end in self._targets.items()):
            self._caught_up.set()

    def _start_offsets(self, ends: Mapping[int, int]) -> Mapping[int, int]:
        """Where each partition is read from; a view kept on disk resumes. Default: 0."""
        return {}

    def _fold(self, records: Sequence[TopicRecord]) -> None:
        """Fold a batch of records (maybe none: the positions moved) into the view.

        The default folds each record by `_apply`; one that does not decode is skipped.
        """
        for record in records:
            try:
                self._apply(record.key, record.value)
            except DecodeError as exc:
                # One bad record must not blind the whole view: skip it, say where it is.
                log.warning(
                    "view of %s: skipping record %r at %s: %s",
                    self._topic,
                    record.key,
                    _where(record.partition, record.offset),
                    exc,
                )

    @abstractmethod
    def _apply(self, key: str, value: bytes | None) -> None:
        """Fold one record into the view; raise on bytes that do not decode."""


def _where(partition: int, offset: int) -> str:
    return f"partition {partition} offset {offset}"


def put(lock: threading.Lock, table: dict[str, _V], key: str, value: _V | None) -> None:
    """Set or, for a tombstone (None), delete a key of an in-memory view."""
    with lock:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
