"""The worker's consumer of `dispatch`, driven from asyncio on one dedicated thread.

A confluent-kafka `Consumer` is not safe to use from several threads at once, and its
calls block; so every call goes through one single-thread executor, and the event loop
awaits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from pipeline.runtime.kafka_clients import ClientConfig

log = logging.getLogger(__name__)

R = TypeVar("R")


class DispatchConsumer:
    """Fetches dispatch records in batches no larger than the free invoker slots."""

    def __init__(self, config: ClientConfig, topic: str) -> None:
        self._config = dict(config)
        self._topic = topic
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline-dispatch")
        self._consumer: Consumer | None = None
        self._paused = False

    async def _call(self, fn: Callable[[], R]) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        consumer = Consumer(self._config)
        consumer.subscribe([self._topic])
        self._consumer = consumer

    def _client(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the dispatch consumer is not open")
        return self._consumer

    async def poll_batch(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to `max_records` dispatch records; waits at most `timeout_s` for the first."""
        return await self._call(lambda: self._poll_batch(max_records, timeout_s))

    def _poll_batch(self, max_records: int, timeout_s: float) -> list[Message]:
        consumer = self._client()
        if self._paused:
            consumer.resume(consumer.assignment())
            self._paused = False
        # poll() returns as soon as one record is there; consume(..., 0) then takes only
        # what is already fetched. A single consume(n, timeout) would wait for n records.
        first = consumer.poll(timeout_s)
        if first is None:
            return []
        fetched = [first]
        if max_records > 1:
            fetched.extend(consumer.consume(max_records - 1, 0))
        if any((error := msg.error()) is not None and error.fatal() for msg in fetched):
            # A fatal consumer never fetches again (seen when a broker restart makes the
            # coordinator fence a static member rejoining with its old member id): join
            # again with a new one. Attempts in flight are left to their leases.
            log.warning("dispatch consumer failed fatally; joining the group with a new one")
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()
            self._paused = False
            self._open()
            return []
        return [msg for msg in fetched if _usable(msg)]

    async def commit(self, batch: Sequence[Message]) -> set[tuple[str, int]]:
        """Commit past `batch`, synchronously; returns the partitions that committed."""
        return await self._call(lambda: self._commit(batch))

    def _commit(self, batch: Sequence[Message]) -> set[tuple[str, int]]:
        next_offsets: dict[tuple[str, int], int] = {}
        for msg in batch:
            topic, partition, offset = position(msg)
            where = (topic, partition)
            next_offsets[where] = max(next_offsets.get(where, 0), offset + 1)
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            committed = self._client().commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning(
                "dispatch commit failed; leaving the batch to the scheduler's leases",
                extra={"error": str(exc), "records": len(batch)},
            )
            return set()
        ok: set[tuple[str, int]] = set()
        for tp in committed or offsets:
            if tp.error is not None:
                log.warning(
                    "dispatch commit failed for a partition; leaving its records to leases",
                    extra={"topic": tp.topic, "partition": tp.partition, "error": str(tp.error)},
                )
            else:
                ok.add((tp.topic, tp.partition))
        return ok

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


def _usable(msg: Message) -> bool:
    error = msg.error()
    if error is None:
        return True
    if error.code() != KafkaError._PARTITION_EOF:
        log.warning("dispatch consumer error", extra={"error": error.str()})
    return False
