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
from pipeline.core.lifecycle import InvocationStatus
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
        # Derived from the pending invocations, so never written anywhere: per queue, a
        # heap of (priority, seq, id); stale entries are skipped when read.
        self._waiting: dict[QueueId, list[tuple[int, int, str]]] = {}
        self._queue_wakes: list[tuple[int, QueueId]] = []
        self._touched_queues: set[QueueId] = set()
        self.dirty_invocations: set[str] = set()
        self.dirty_queues: set[QueueId] = set()

    def queue(self, queue_id: QueueId) -> VirtualQueue:
        return self.queues.get(queue_id) or VirtualQueue(queue_id)

    def put_invocation(self, invocation: Invocation, *, dirty: bool = True) -> None:
        self.invocations[invocation.id] = invocation
        if invocation.wake_at_ms is not None:
            heapq.heappush(self._timers, (invocation.wake_at_ms, invocation.id))
        if invocation.status is InvocationStatus.PENDING:
            entry = (invocation.request.priority, invocation.queue_seq, invocation.id)
            heapq.heappush(self._waiting.setdefault(invocation.queue_id, []), entry)
        if dirty:
            self.dirty_invocations.add(invocation.id)

    def forget_invocation(self, invocation_id: str) -> None:
        self.invocations.pop(invocation_id, None)
        self.dirty_invocations.add(invocation_id)

    def put_queue(self, queue: VirtualQueue, now_ms: int | None = None) -> None:
        """Store a queue's new state; `now_ms` None means restoring (nothing is dirty)."""
        if now_ms is not None and queue.is_idle_at(now_ms):
            self.queues.pop(queue.id, None)
            self._waiting.pop(queue.id, None)
        else:
            self.queues[queue.id] = queue
        if now_ms is not None:
            self.dirty_queues.add(queue.id)
            self._touched_queues.add(queue.id)

    def waiting_head(self, queue_id: QueueId) -> str | None:
        """The pending invocation that starts next in this queue, if any."""
        heap = self._waiting.get(queue_id)
        while heap:
            _, seq, invocation_id = heap[0]
            invocation = self.invocations.get(invocation_id)
            if (
                invocation is not None
                and invocation.status is InvocationStatus.PENDING
                and invocation.queue_seq == seq
            ):
                return invocation_id
            heapq.heappop(heap)
        return None

    def wake_queue_at(self, queue_id: QueueId, at_ms: int) -> None:
        heapq.heappush(self._queue_wakes, (at_ms, queue_id))

    def queues_to_pump(self, now_ms: int, *, everything: bool = False) -> list[QueueId]:
        """Queues whose head may be admitted: touched since last time, or due to wake."""
        due = set(self.queues) if everything else self._touched_queues
        self._touched_queues = set()
        while self._queue_wakes and self._queue_wakes[0][0] <= now_ms:
            due.add(heapq.heappop(self._queue_wakes)[1])
        return [q for q in due if (queue := self.queues.get(q)) is not None and queue.queued]

    def next_wake_ms(self) -> int | None:
        wakes = [heap[0][0] for heap in (self._timers, self._queue_wakes) if heap]
        return min(wakes) if wakes else None

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
            state.put_queue(codec.decode_queue_state(value))
    else:
        log.warning("skipping changelog record with unknown key %r", text)
