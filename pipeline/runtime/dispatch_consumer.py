"""The worker's consumer of `dispatch`, driven from asyncio on one dedicated thread.

A confluent-kafka `Consumer` is not safe to use from several threads at once, and its
calls block; so every call goes through one single-thread executor, and the event loop
awaits them.

A batch counts as taken only if its offsets were committed in the group generation in
which it was fetched. Rebalance callbacks run inside `poll`/`consume`, on the executor
thread; so a batch's commit is queued on that thread before anything else can poll,
and it refuses every partition that was revoked or assigned since the fetch. Committed
later, in a new generation, the commit would be accepted even for a partition now owned
by another worker, which had already read the old committed offset and runs the same
dispatch again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from pipeline.kafka.config import ClientConfig
from pipeline.kafka.errors import is_fatal

log = logging.getLogger(__name__)

R = TypeVar("R")

Where = tuple[str, int]


@dataclass(frozen=True, slots=True)
class DispatchBatch:
    """Records fetched together, and their commit: it resolves to the partitions whose
    offsets were committed, the only ones whose records this worker may run."""

    records: list[Message]
    committed: asyncio.Future[set[Where]]


class DispatchConsumer:
    """Fetches dispatch records in batches no larger than the free invoker slots."""

    def __init__(self, config: ClientConfig, topic: str) -> None:
        self._config = dict(config)
        self._topic = topic
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline-dispatch")
        self._consumer: Consumer | None = None
        self._paused = False
        # Bumped for a partition whenever it is assigned, revoked or lost.
        self._epochs: dict[Where, int] = {}

    async def _call(self, fn: Callable[[], R]) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        consumer = Consumer(self._config)
        consumer.subscribe(
            [self._topic],
            on_assign=self._moved,
            on_revoke=self._moved,
            on_lost=self._moved,
        )
        self._consumer = consumer

    def _moved(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            where = (tp.topic, tp.partition)
            self._epochs[where] = self._epochs.get(where, 0) + 1

    def _client(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the dispatch consumer is not open")
        return self._consumer

    async def poll_batch(self, max_records: int, timeout_s: float) -> DispatchBatch:
        """Up to `max_records` dispatch records, their commit already started; waits at
        most `timeout_s` for the first record."""
        records, commit = await self._call(lambda: self._poll_batch(max_records, timeout_s))
        committed: asyncio.Future[set[Where]]
        if commit is None:
            committed = asyncio.get_running_loop().create_future()
            committed.set_result(set())
        else:
            committed = asyncio.wrap_future(commit)
        return DispatchBatch(records, committed)

    def _poll_batch(
        self, max_records: int, timeout_s: float
    ) -> tuple[list[Message], Future[set[Where]] | None]:
        records, epochs = self._fetch(max_records, timeout_s)
        if not records:
            return [], None
        fetched_in = {where: epochs.get(where, 0) for where in _partitions(records)}
        # Queued on this thread now, so no poll (and no rebalance) comes before it.
        return records, self._executor.submit(self._commit, records, fetched_in)

    def _fetch(self, max_records: int, timeout_s: float) -> tuple[list[Message], dict[Where, int]]:
        """Records, and the partitions' epochs when the first of them was returned."""
        consumer = self._client()
        if self._paused:
            consumer.resume(consumer.assignment())
            self._paused = False
        # poll() returns as soon as one record is there; consume(..., 0) then takes only
        # what is already fetched. A single consume(n, timeout) would wait for n records.
        first = consumer.poll(timeout_s)
        if first is None:
            return [], {}
        # A rebalance served by poll() came before `first`; one served by consume() may
        # come after some of the records, so the commit refuses partitions that moved
        # since `first`.
        epochs = dict(self._epochs)
        fetched = [first]
        if max_records > 1:
            fetched.extend(consumer.consume(max_records - 1, 0))
        if any(is_fatal(msg.error()) for msg in fetched):
            # A fatal consumer never fetches again (seen when a broker restart makes the
            # coordinator fence a static member rejoining with its old member id): join
            # again with a new one. Attempts in flight are left to their leases.
            log.warning("dispatch consumer failed fatally; joining the group with a new one")
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()
            self._paused = False
            self._open()
            return [], {}
        return [msg for msg in fetched if _usable(msg)], epochs

    def _commit(self, batch: Sequence[Message], fetched_in: dict[Where, int]) -> set[Where]:
        first: dict[Where, int] = {}
        past: dict[Where, int] = {}
        for msg in batch:
            topic, partition, offset = position(msg)
            where = (topic, partition)
            first[where] = min(first.get(where, offset), offset)
            past[where] = max(past.get(where, 0), offset + 1)
        moved = {w for w, epoch in fetched_in.items() if self._epochs.get(w, 0) != epoch}
        if moved:
            log.info(
                "dispatch records fetched before a rebalance are not run here",
                extra={"partitions": sorted(p for _, p in moved)},
            )
        offsets = [TopicPartition(t, p, o) for (t, p), o in past.items() if (t, p) not in moved]
        ok: set[Where] = set()
        if offsets:
            try:
                committed = self._client().commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning(
                    "dispatch commit failed; the batch is fetched again",
                    extra={"error": str(exc), "records": len(batch)},
                )
                committed = []
            for tp in committed:
                if tp.error is not None:
                    log.warning(
                        "dispatch commit failed for a partition; its records are fetched again",
                        extra={"partition": tp.partition, "error": str(tp.error)},
                    )
                else:
                    ok.add((tp.topic, tp.partition))
        self._rewind({w: offset for w, offset in first.items() if w not in ok})
        return ok

    def _rewind(self, first_offsets: dict[Where, int]) -> None:
        """Fetch again, from its first record, a batch not committed on a partition this
        worker still owns; on one it lost, the new owner starts at the committed offset."""
        consumer = self._client()
        owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        for (topic, partition), offset in first_offsets.items():
            if (topic, partition) not in owned:
                continue
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                # Left to the scheduler's lease, which dispatches the attempt again.
                log.warning(
                    "could not rewind an uncommitted dispatch batch",
                    extra={"partition": partition, "offset": offset, "error": str(exc)},
                )

    async def keep_alive(self) -> None:
        """Stay in the group while every slot is busy, without taking records.

        Not polling for `max.poll.interval.ms` would get this worker thrown out of the
        group; polling with the partitions paused keeps it in and fetches nothing.
        """
        await self._call(self._keep_alive)

    def _keep_alive(self) -> None:
        consumer = self._client()
        consumer.pause(consumer.assignment())
        self._paused = True
        msg = consumer.poll(0)
        if msg is not None and msg.error() is None:
            # Fetched before the pause reached it (e.g. a partition assigned during this
            # poll): rewind so that it is taken once a slot is free.
            tp = TopicPartition(*position(msg))
            consumer.pause([tp])
            try:
                consumer.seek(tp)
            except KafkaException as exc:
                # Skipped by this worker then; the scheduler's lease recovers it.
                log.warning(
                    "could not rewind a dispatch record fetched while busy",
                    extra={"partition": tp.partition, "offset": tp.offset, "error": str(exc)},
                )

    async def close(self) -> None:
        try:
            if self._consumer is not None:
                await self._call(self._consumer.close)
                self._consumer = None
        finally:
            self._executor.shutdown(wait=False)


def position(msg: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed record (always known once consumed)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("a consumed record without topic, partition or offset")
    return topic, partition, offset


def _partitions(records: Sequence[Message]) -> set[Where]:
    return {(topic, partition) for topic, partition, _ in map(position, records)}


def _usable(msg: Message) -> bool:
    error = msg.error()
    if error is None:
        return True
    if error.code() != KafkaError._PARTITION_EOF:
        log.warning("dispatch consumer error", extra={"error": error.str()})
    return False
