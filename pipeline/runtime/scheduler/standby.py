"""Warm copies of the partitions other scheduler instances own.

A scheduler that takes over a partition restores it from its local store's checkpoint
on: only the changelog after the checkpoint is read. Without a copy that is the whole
changelog of the partition (a minute for a million waiting invocations); with one it is
the last moment of the dead owner's writes. So each instance follows the changelog of
every partition it does not own into its own store, between batches, the way Kafka
Streams keeps standby replicas. The copy is a cache like the rest of the store: the
restore on assignment still reads every committed record after its checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline.codec.records import WireCodec
from pipeline.kafka.config import ClientConfig
from pipeline.runtime.scheduler.partition_state import LAYOUT, Checkpoint, PartitionState
from pipeline.runtime.state_store import StateStore

log = logging.getLogger(__name__)

# A full pump is owed on takeover: the copy was never pumped under any rules.
_NOT_PUMPED = -1


class StandbyCopies:
    def __init__(
        self,
        store: StateStore,
        consumer_config: ClientConfig,
        changelog: str,
        partitions: int,
        codec: WireCodec,
        clock: Callable[[], int],
    ) -> None:
        self._store = store
        self._changelog = changelog
        self._partitions = partitions
        self._codec = codec
        self._clock = clock
        self._consumer = Consumer(
            {
                **consumer_config,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        self._copies: dict[int, PartitionState] = {}
        self._positions: dict[int, int] = {}
        # Copies that took records since their checkpoint; an untouched one keeps the
        # checkpoint it has (e.g. this instance's own, from when it owned the partition).
        self._dirty: set[int] = set()

    @property
    def following(self) -> frozenset[int]:
        return frozenset(self._copies)

    def follow_all_but(self, owned: Collection[int]) -> None:
        """Follow every partition not in `owned`; stop following those in it, their
        copies committed up to where they were read, so the owner's restore goes on
        from there."""
        for partition in [p for p in self._copies if p in owned]:
            self._commit(partition)
            del self._copies[partition]
            del self._positions[partition]
        for partition in range(self._partitions):
            if partition not in owned and partition not in self._copies:
                self._copies[partition] = PartitionState(self._store, partition, self._codec)
                self._positions[partition] = self._start(self._copies[partition])
        self._consumer.assign(
            [TopicPartition(self._changelog, p, o) for p, o in self._positions.items()]
        )

    def _start(self, copy: PartitionState) -> int:
        checkpoint = copy.checkpoint()
        if (
            checkpoint is not None
            and checkpoint.changelog == self._changelog
            and checkpoint.layout == LAYOUT
        ):
            return checkpoint.offset
        self._store.wipe_partition(copy.partition)
        return 0

    def poll(self, max_records: int) -> int:
        """Apply what has been fetched, up to `max_records`, without waiting."""
        if not self._copies:
            return 0
        records = self._consumer.consume(max_records, timeout=0)
        now = self._clock()
        for message in records:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("standby copy: %s", error.str())
                continue
            partition = message.partition()
            copy = self._copies.get(partition) if partition is not None else None
            if copy is None or partition is None:
                continue  # stopped following it within this batch
            copy.apply_changelog(message.key(), message.value(), now)
            self._positions[partition] = (message.offset() or 0) + 1
            self._dirty.add(partition)
        for partition in list(self._dirty):
            self._commit(partition)
        return len(records)

    def _commit(self, partition: int) -> None:
        if partition not in self._dirty:
            return
        self._dirty.discard(partition)
        copy = self._copies[partition]
        checkpoint = Checkpoint(
            self._changelog, self._positions[partition], _NOT_PUMPED, self._clock()
        )
        copy.commit(copy.changelog_writes(), checkpoint)

    def close(self) -> None:
        for partition in list(self._copies):
            self._commit(partition)
        self._copies.clear()
        self._consumer.close()
