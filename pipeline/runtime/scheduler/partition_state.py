"""The scheduler's mutable state of one partition, and its changelog.

The core hands back new frozen values; this container stores them, remembers which
keys changed in the current transaction and keeps a timer heap derived from the
invocations' `wake_at_ms`. It is rebuilt from the compacted changelog topic whenever
the partition is assigned, so the changelog is the only durable copy.
"""

from __future__ import annotations

import heapq
import logging

from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline.codec.records import WireCodec
from pipeline.core.model import QueueId
from pipeline.core.state import Invocation, VirtualQueue

log = logging.getLogger(__name__)

INVOCATION_PREFIX = "i/"
QUEUE_PREFIX = "q/"


class PartitionState:
    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.invocations: dict[str, Invocation] = {}
        self.queues: dict[QueueId, VirtualQueue] = {}
        self._timers: list[tuple[int, str]] = []
        self.dirty_invocations: set[str] = set()
        self.dirty_queues: set[QueueId] = set()

    def queue(self, queue_id: QueueId) -> VirtualQueue:
        return self.queues.get(queue_id) or VirtualQueue(queue_id)

    def put_invocation(self, invocation: Invocation, *, dirty: bool = True) -> None:
        self.invocations[invocation.id] = invocation
        if invocation.wake_at_ms is not None:
            heapq.heappush(self._timers, (invocation.wake_at_ms, invocation.id))
        if dirty:
            self.dirty_invocations.add(invocation.id)

    def forget_invocation(self, invocation_id: str) -> None:
        self.invocations.pop(invocation_id, None)
        self.dirty_invocations.add(invocation_id)

    def put_queue(self, queue: VirtualQueue, *, dirty: bool = True) -> None:
        if queue.is_idle:
            self.queues.pop(queue.id, None)
        else:
            self.queues[queue.id] = queue
        if dirty:
            self.dirty_queues.add(queue.id)

    def next_wake_ms(self) -> int | None:
        return self._timers[0][0] if self._timers else None

    def pop_due(self, now_ms: int) -> list[str]:
        """Ids whose timer is due; stale heap entries (timer since moved) are dropped."""
        due: list[str] = []
        while self._timers and self._timers[0][0] <= now_ms:
            at, invocation_id = heapq.heappop(self._timers)
            invocation = self.invocations.get(invocation_id)
            if invocation is not None and invocation.wake_at_ms == at:
                due.append(invocation_id)
        return due

    def take_changes(
        self,
    ) -> tuple[list[tuple[str, Invocation | None]], list[tuple[QueueId, VirtualQueue | None]]]:
        """What changed since the last call; None stands for deleted."""
        invocations = [(i, self.invocations.get(i)) for i in self.dirty_invocations]
        queues = [(q, self.queues.get(q)) for q in self.dirty_queues]
        self.dirty_invocations.clear()
        self.dirty_queues.clear()
        return invocations, queues


def restore(
    consumer_config: dict[str, object], changelog: str, partition: int, codec: WireCodec
) -> PartitionState:
    """Fold the committed changelog of one partition into a fresh state."""
    state = PartitionState(partition)
    consumer = Consumer(
        {
            **consumer_config,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        consumer.assign([TopicPartition(changelog, partition, 0)])
        records = 0
        while True:
            message = consumer.poll(5.0)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                raise RuntimeError(f"restoring {changelog}[{partition}] failed: {error}")
            records += 1
            _apply_changelog_record(state, message.key(), message.value(), codec)
    finally:
        consumer.close()
    log.info(
        "restored partition %d: %d records, %d invocations, %d queues",
        partition,
        records,
        len(state.invocations),
        len(state.queues),
    )
    return state


def _apply_changelog_record(
    state: PartitionState, key: bytes | None, value: bytes | None, codec: WireCodec
) -> None:
    text = (key or b"").decode()
    if text.startswith(INVOCATION_PREFIX):
        if value is None:
            state.invocations.pop(text[len(INVOCATION_PREFIX) :], None)
        else:
            state.put_invocation(codec.decode_invocation_state(value), dirty=False)
    elif text.startswith(QUEUE_PREFIX):
        queue_id = QueueId.parse(text[len(QUEUE_PREFIX) :])
        if value is None:
            state.queues.pop(queue_id, None)
        else:
            state.put_queue(codec.decode_queue_state(value), dirty=False)
    else:
        log.warning("skipping changelog record with unknown key %r", text)
