"""Bring a partition's local state up to the end of its committed changelog.

The local RocksDB is a cache of the changelog topic. A usable checkpoint means only the
changelog records after it are read; otherwise the partition's rows are wiped and the
whole changelog is folded in again.

"The end" is every record written before the partition was assigned here, once its
transaction is decided: a read_committed reader stops at the last stable offset, which
lags behind a commit until the broker has written its markers, and stands still behind
the open transaction of a process that died. Stopping there would lose the previous
owner's last batches; so the restore reads until it has passed the high watermark it
saw when it began.
"""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline.codec.records import WireCodec
from pipeline.core.checkpoint import SavedPosition, restart_reason
from pipeline.kafka.config import ClientConfig
from pipeline.runtime.scheduler.partition_state import LAYOUT, Checkpoint, PartitionState
from pipeline.runtime.state_store import StateStore

log = logging.getLogger(__name__)

_RESTORE_COMMIT_EVERY = 5_000


def restore(
    store: StateStore,
    consumer_config: ClientConfig,
    changelog: str,
    partition: int,
    codec: WireCodec,
    *,
    rules_version: int,
    now_ms: int,
) -> PartitionState:
    """Bring the local store of one partition up to the end of its committed changelog.

    A usable checkpoint means only the records after it are read; otherwise the
    partition's rows are wiped and the whole changelog is folded in.
    """
    state = PartitionState(store, partition, codec)
    consumer = Consumer(
        {
            **consumer_config,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        low, high = _written_offsets(consumer_config, changelog, partition)
        checkpoint = state.checkpoint()
        start = usable_start(checkpoint, changelog, high, now_ms)
        if start is None:
            store.wipe_partition(partition)
            start = 0
        else:
            assert checkpoint is not None
            state.full_pump_needed = checkpoint.rules_version != rules_version
        records, end = 0, start
        if start < high:
            consumer.assign([TopicPartition(changelog, partition, max(start, low))])
            records, end = _fold(consumer, state, changelog, high, rules_version, now_ms)
            end = max(end, start)
        checkpoint = Checkpoint(changelog, end, _rules_version(state, rules_version), now_ms)
        state.commit(state.changelog_writes(), checkpoint)
    finally:
        consumer.close()
    log.info(
        "restored partition %d from changelog offset %d: %d records read",
        partition,
        start,
        records,
    )
    return state


def _written_offsets(
    consumer_config: ClientConfig, changelog: str, partition: int
) -> tuple[int, int]:
    """Low and high watermark of everything written, decided or not."""
    probe = Consumer({**consumer_config, "isolation.level": "read_uncommitted"})
    try:
        low, high = probe.get_watermark_offsets(TopicPartition(changelog, partition), 30)
    finally:
        probe.close()
    return int(low), int(high)


def usable_start(
    checkpoint: Checkpoint | None, changelog: str, high: int, now_ms: int
) -> int | None:
    saved = None
    if checkpoint is not None:
        saved = SavedPosition(
            checkpoint.changelog, checkpoint.offset, checkpoint.saved_at_ms, checkpoint.layout
        )
    reason = restart_reason(saved, changelog, LAYOUT, high, now_ms)
    if reason is not None:
        if checkpoint is not None:
            log.info("local state of %s not resumable (%s): restoring in full", changelog, reason)
        return None
    assert checkpoint is not None
    return checkpoint.offset


def _rules_version(state: PartitionState, rules_version: int) -> int:
    # A partition still owing a full pump must not claim it was pumped under these rules.
    return -1 if state.pump_pending else rules_version


def _fold(
    consumer: Consumer,
    state: PartitionState,
    changelog: str,
    past: int,
    rules_version: int,
    now_ms: int,
) -> tuple[int, int]:
    """Apply changelog records until the reader's end is at `past` or beyond; the
    records read, and that end."""
    records = 0
    offset = -1
    waited = 0.0
    while True:
        message = consumer.poll(5.0)
        if message is None:
            waited += 5.0
            # Never silent: an open transaction on the changelog (of a process that
            # died) holds a read_committed reader back until its timeout aborts it.
            log.warning(
                "restoring %s[%d]: no record for %.0f s after %d records (offset %d); "
                "waiting for the transactions before offset %d to be decided",
                changelog,
                state.partition,
                waited,
                records,
                offset,
                past,
            )
            continue
        waited = 0.0
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                end = message.offset() or 0
                if end >= past:
                    return records, end
                continue  # at the stable end, short of `past`: wait for the markers
            raise RuntimeError(f"restoring {changelog}[{state.partition}] failed: {error}")
        records += 1
        offset = message.offset() or 0
        state.apply_changelog(message.key(), message.value(), now_ms)
        if records % _RESTORE_COMMIT_EVERY == 0:
            # Bounds the batch held in memory; the checkpoint makes the work so far count
            # if this restore is interrupted.
            state.commit(
                state.changelog_writes(),
                Checkpoint(changelog, offset + 1, _rules_version(state, rules_version), now_ms),
            )
