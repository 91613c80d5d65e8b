"""Materialized views of compacted topics, for readers such as the Admin API.

A view reads every partition of its topic from the beginning with a consumer that is
assigned, not subscribed: each reader needs the whole topic, and a consumer group would
split it. It folds records into a dict (a `None` value is a tombstone and deletes the
key) in a background thread, and readers take snapshots under a lock.

Caught up means: every partition has been read up to the end offset it had when the view
started. With `read_committed` that end is the last stable offset, so records of aborted
transactions are never shown and an open transaction does not hold the view back.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from typing import TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from pipeline.codec.records import WireCodec
from pipeline.core.deployment import DeploymentLoad
from pipeline.core.fair_share import ScopeLoad
from pipeline.core.limits import RuleSet
from pipeline.core.model import ServiceDefinition
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.errors import DecodeError, NotFoundError, RetryableError
from pipeline.kafka.config import ClientConfig, ClusterConfig
from pipeline.runtime.limit_rules import decode_record, newest
from pipeline.runtime.scheduler.partition_state import (
    DEPLOYMENT_PREFIX,
    INVOCATION_PREFIX,
    QUEUE_PREFIX,
    SCOPE_PREFIX,
)
from topics import TopicNames

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
        }
    )


class _CompactedTopicView(ABC):
    """Reads one compacted topic into memory in a thread; subclasses fold the records."""

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
            self._positions = dict.fromkeys(partitions, 0)
            consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions])
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
                for message in messages:
                    self._handle(message)
                if not self._caught_up.is_set():
                    self._update_caught_up()
        except Exception:
            # Readers would otherwise see a view that silently stopped moving.
            log.exception("view of %s stopped on an unexpected error", self._topic)
        finally:
            consumer.close()

    def _handle(self, message: Message) -> None:
        partition, offset, error = message.partition(), message.offset(), message.error()
        if partition is None or offset is None:
            log.warning("view of %s: client reported %s", self._topic, error)
            return
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._advance(partition, offset)
            else:
                log.warning("view of %s: partition %s: %s", self._topic, partition, error)
            return
        self._advance(partition, offset + 1)
        raw_key = message.key()
        if raw_key is None:
            log.warning(
                "view of %s: skipping record without key at %s",
                self._topic,
                _where(partition, offset),
            )
            return
        try:
            self._apply(raw_key.decode(), message.value())
        except (DecodeError, UnicodeDecodeError) as exc:
            # One bad record must not blind the whole view: skip it, say where it is.
            log.warning(
                "view of %s: skipping record %r at %s: %s",
                self._topic,
                raw_key,
                _where(partition, offset),
                exc,
            )
        except Exception:
            log.exception(
                "view of %s: skipping record %r at %s that could not be applied",
                self._topic,
                raw_key,
                _where(partition, offset),
            )

    def _advance(self, partition: int, next_offset: int) -> None:
        if next_offset > self._positions.get(partition, 0):
            self._positions[partition] = next_offset

    def _update_caught_up(self) -> None:
        if all(self._positions.get(p, 0) >= end for p, end in self._targets.items()):
            self._caught_up.set()

    @abstractmethod
    def _apply(self, key: str, value: bytes | None) -> None:
        """Fold one record into the view; raise on bytes that do not decode."""


def _where(partition: int, offset: int) -> str:
    return f"partition {partition} offset {offset}"


class SchedulerStateView(_CompactedTopicView):
    """Invocations and virtual queues as the scheduler's changelog last recorded them."""

    def __init__(self, cluster: ClusterConfig, names: TopicNames, codec: WireCodec) -> None:
        super().__init__(cluster, names.scheduler_state)
        self._codec = codec
        self._invocations: dict[str, Invocation] = {}
        self._queues: dict[str, VirtualQueue] = {}
        self._scopes: dict[str, ScopeLoad] = {}
        self._deployments: dict[str, DeploymentLoad] = {}

    def deployment_load(self, deployment: str) -> DeploymentLoad | None:
        with self._lock:
            return self._deployments.get(deployment)

    def scope_load(self, scope: str) -> ScopeLoad | None:
        with self._lock:
            return self._scopes.get(scope)

    def invocation(self, invocation_id: str) -> Invocation | None:
        with self._lock:
            return self._invocations.get(invocation_id)

    def invocations(self) -> list[Invocation]:
        with self._lock:
            invocations = list(self._invocations.values())
        return sorted(invocations, key=lambda invocation: invocation.id)

    def queues(self) -> list[VirtualQueue]:
        with self._lock:
            queues = list(self._queues.values())
        return sorted(queues, key=lambda queue: str(queue.id))

    def _apply(self, key: str, value: bytes | None) -> None:
        if key.startswith(INVOCATION_PREFIX):
            invocation_id = key.removeprefix(INVOCATION_PREFIX)
            invocation = None if value is None else self._codec.decode_invocation_state(value)
            _put(self._lock, self._invocations, invocation_id, invocation)
        elif key.startswith(QUEUE_PREFIX):
            queue_id = key.removeprefix(QUEUE_PREFIX)
            queue = None if value is None else self._codec.decode_queue_state(value)
            _put(self._lock, self._queues, queue_id, queue)
        elif key.startswith(SCOPE_PREFIX):
            load = None if value is None else self._codec.decode_scope_load(value)
            _put(self._lock, self._scopes, key.removeprefix(SCOPE_PREFIX), load)
        elif key.startswith(DEPLOYMENT_PREFIX):
            d_load = None if value is None else self._codec.decode_deployment_load(value)
            _put(self._lock, self._deployments, key.removeprefix(DEPLOYMENT_PREFIX), d_load)
        else:
            raise DecodeError(
                f"key {key!r} is none of i/<invocation id>, q/<queue id>, s/<scope>, d/<deployment>"
            )


class ServiceCatalogView(_CompactedTopicView):
    """Service definitions as worker deployments last announced them."""

    def __init__(self, cluster: ClusterConfig, names: TopicNames, codec: WireCodec) -> None:
        super().__init__(cluster, names.services)
        self._codec = codec
        self._services: dict[str, ServiceDefinition] = {}

    def services(self) -> list[ServiceDefinition]:
        with self._lock:
            services = list(self._services.values())
        return sorted(services, key=lambda service: service.name)

    def service(self, name: str) -> ServiceDefinition | None:
        with self._lock:
            return self._services.get(name)

    def _apply(self, key: str, value: bytes | None) -> None:
        service = None if value is None else self._codec.decode_service(value)
        _put(self._lock, self._services, key, service)


class LimitRulesView(_CompactedTopicView):
    """The newest limit rule set on the limits control topic (version 0 before any).

    A process that writes rules offers what it wrote (`offer`), so that it reads its own
    write at once; the record, when it comes back, is not newer and changes nothing.
    """

    def __init__(self, cluster: ClusterConfig, names: TopicNames, codec: WireCodec) -> None:
        super().__init__(cluster, names.limits)
        self._codec = codec
        self._ruleset = RuleSet()

    def ruleset(self) -> RuleSet:
        with self._lock:
            return self._ruleset

    def offer(self, ruleset: RuleSet) -> bool:
        """Keep `ruleset` if it is newer than the one held; True when it was."""
        with self._lock:
            kept = newest(self._ruleset, ruleset)
            changed = kept is not self._ruleset
            self._ruleset = kept
        return changed

    def _apply(self, key: str, value: bytes | None) -> None:
        candidate = decode_record(self._codec, key.encode(), value)
        if candidate is not None:
            self.offer(candidate)


def _put(lock: threading.Lock, table: dict[str, _V], key: str, value: _V | None) -> None:
    with lock:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


__all__ = ["LimitRulesView", "SchedulerStateView", "ServiceCatalogView"]
