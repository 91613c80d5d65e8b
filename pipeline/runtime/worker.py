"""The worker: takes dispatch orders as invoker slots free up and runs them.

Per batch of dispatch records, in this order:

1. Fetch at most as many records as there are free slots (backpressure: a busy worker
   leaves records in Kafka for idle ones).
2. Start committing the offsets past the batch, in the group generation it was fetched
   in (see `dispatch_consumer`).
3. Start one task per record; each journals its steps and its outcome to the journal
   partition with the dispatch record's partition number. A handler's first new step
   waits until the commit of step 2 has landed (and abandons the attempt if it failed).

The commit before any step is what keeps `ctx.run` steps from running twice. Were a dispatch
redelivered after its attempt had started (crash, rebalance), the same attempt would
run again with the journal of the dispatch order, which lacks the steps the lost run
had already had acknowledged, and would execute them again. Committing first means a
dispatch is lost instead of repeated; a lost one is recovered by the scheduler: the
attempt's lease expires, the scheduler fences the attempt through the journal, and
dispatches the next attempt with the full journal. A handler that completes without a
new step may be run twice by a redelivery; its second outcome is for an attempt that is
no longer running, and the scheduler ignores it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence

from confluent_kafka import Message
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

from pipeline.codec.records import WireCodec
from pipeline.errors import RetryableError, ValidationError
from pipeline.runtime.consumed import ConsumedRecord, dead_letter_headers, read_record
from pipeline.runtime.dispatch_consumer import DispatchConsumer, position
from pipeline.runtime.invoker import Invoker
from pipeline.runtime.kafka_clients import (
    AsyncProducer,
    joined_cluster,
    journal_producer_config,
    worker_consumer_config,
)
from pipeline.runtime.tracing import tracer_provider_from_settings
from pipeline.sdk.service import Service
from pipeline.settings import Settings

log = logging.getLogger(__name__)

# How long one fetch waits for a first record; it bounds how late `stop` is noticed.
_POLL_TIMEOUT_S = 0.1
# How long registration and shutdown wait for Kafka to acknowledge what was produced.
_FLUSH_TIMEOUT_S = 30.0
# While every slot is busy, how often the consumer is polled (paused) to stay in its group.
_KEEP_ALIVE_INTERVAL_S = 1.0


class Worker:
    """Runs the handlers of `services` for dispatch orders, `settings.worker_slots` at a time."""

    def __init__(
        self,
        settings: Settings,
        services: Sequence[Service],
        *,
        tracer_provider: trace.TracerProvider | None = None,
        codec: WireCodec | None = None,
        shutdown_grace_s: float = 10.0,
    ) -> None:
        names = [s.name for s in services]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValidationError(f"services registered twice on one worker: {duplicates}")
        self._settings = settings
        self._services = tuple(services)
        self._topics = settings.topic_names
        self._codec = codec if codec is not None else WireCodec()
        # A provider we build is ours to shut down; an injected one belongs to the caller.
        self._owned_provider: SdkTracerProvider | None = None
        if tracer_provider is None:
            self._owned_provider = tracer_provider_from_settings(
                settings, service_name="pipeline-worker"
            )
            tracer_provider = self._owned_provider
        self._tracer = tracer_provider.get_tracer("pipeline.worker")
        self._shutdown_grace_s = shutdown_grace_s
        self._producer: AsyncProducer | None = None

    def _new_producer(self) -> AsyncProducer:
        producer = AsyncProducer(journal_producer_config(self._settings))
        producer.start()
        return producer

    async def register_services(self) -> None:
        """Announce every service definition on the services topic, keyed by its name.

        Outside `run`, a producer is made for this call and closed after it.
        """
        loop = asyncio.get_running_loop()
        producer = self._producer if self._producer is not None else self._new_producer()
        try:
            acks = [
                producer.send(
                    self._topics.services,
                    self._codec.encode_service(service.definition()),
                    key=service.name.encode(),
                )
                for service in self._services
            ]
            await loop.run_in_executor(None, producer.flush, _FLUSH_TIMEOUT_S)
            await asyncio.gather(*acks)
        finally:
            if producer is not self._producer:
                await loop.run_in_executor(None, producer.close, _FLUSH_TIMEOUT_S)
        log.info("services registered", extra={"services": [s.name for s in self._services]})

    async def run(self, stop: asyncio.Event) -> None:
        """Register the services, then run dispatch orders until `stop` is set.

        A worker runs once: a tracer provider it built itself is shut down at the end.
        """
        loop = asyncio.get_running_loop()
        self._settings = await loop.run_in_executor(None, joined_cluster, self._settings, "worker")
        producer = self._producer = self._new_producer()
        consumer = DispatchConsumer(worker_consumer_config(self._settings), self._topics.dispatch)
        invoker = Invoker(
            self._services,
            producer=producer,
            codec=self._codec,
            journal_topic=self._topics.journal,
            tracer=self._tracer,
            lease_timeout_ms=self._settings.lease_timeout_ms,
            heartbeat_timeout_ms=self._settings.heartbeat_timeout_ms,
            lease_margin_ms=self._settings.lease_margin_ms,
            limits=self._settings.payload_limits,
        )
        running: set[asyncio.Task[None]] = set()
        heartbeats = asyncio.create_task(invoker.keep_leases(self._settings.heartbeat_interval_ms))
        try:
            await self.register_services()
            await consumer.open()
            log.info(
                "worker started",
                extra={"slots": self._settings.worker_slots, "topic": self._topics.dispatch},
            )
            await self._consume(stop, consumer, invoker, running)
        finally:
            await self._drain(running)
            heartbeats.cancel()
            await loop.run_in_executor(None, producer.close, _FLUSH_TIMEOUT_S)
            self._producer = None
            await consumer.close()
            if self._owned_provider is not None:
                await loop.run_in_executor(None, self._owned_provider.shutdown)
            log.info("worker stopped")

    async def _consume(
        self,
        stop: asyncio.Event,
        consumer: DispatchConsumer,
        invoker: Invoker,
        running: set[asyncio.Task[None]],
    ) -> None:
        slots = self._settings.worker_slots
        stopped = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                free = slots - len(running)
                if free <= 0:
                    await asyncio.wait(
                        {stopped, *running},
                        timeout=_KEEP_ALIVE_INTERVAL_S,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if len(running) >= slots and not stop.is_set():
                        await consumer.keep_alive()
                    continue
                await self._take_batch(consumer, invoker, running, free)
        finally:
            stopped.cancel()

    async def _take_batch(
        self,
        consumer: DispatchConsumer,
        invoker: Invoker,
        running: set[asyncio.Task[None]],
        free: int,
    ) -> None:
        batch = await consumer.poll_batch(free, _POLL_TIMEOUT_S)
        # Handlers start now; their first new step waits for the batch's commit (module
        # docstring), so a handler without steps does not pay for it.
        for msg in batch.records:
            committed = asyncio.ensure_future(_committed(batch.committed, msg))
            task = asyncio.create_task(self._run_dispatch(invoker, msg, committed))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(_log_crash)

    async def _run_dispatch(
        self, invoker: Invoker, msg: Message, committed: Awaitable[bool]
    ) -> None:
        record = read_record(msg)
        try:
            if record.value is None:
                raise ValueError("the record has no value")
            order = self._codec.decode_dispatch(record.value)
        except Exception as exc:
            # Kept on the dead-letter topic; the scheduler's lease recovers the attempt,
            # if this was one.
            reason = f"dispatch record undecodable: {type(exc).__name__}: {exc}"
            log.error(
                "dispatch record undecodable; dead-lettered",
                extra={"partition": record.partition, "offset": record.offset, "error": reason},
            )
            await self._dead_letter(record, reason)
            return
        await invoker.invoke(order, record.partition, record.timestamp_ms, committed)

    async def _dead_letter(self, record: ConsumedRecord, reason: str) -> None:
        producer = self._producer
        assert producer is not None
        headers = [
            *record.headers,
            *dead_letter_headers(
                record.topic, record.partition, record.offset, reason, record.unreadable
            ),
        ]
        try:
            await producer.send(
                self._topics.dead_letter, record.value or b"", key=record.key, headers=headers
            )
        except RetryableError as exc:
            log.error("dead-letter record not written", extra={"error": str(exc)})

    async def _drain(self, running: set[asyncio.Task[None]]) -> None:
        """Let running attempts finish within the grace period, then cancel the rest."""
        if not running:
            return
        log.info("worker stopping; waiting for attempts", extra={"running": len(running)})
        _, pending = await asyncio.wait(set(running), timeout=self._shutdown_grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("attempts cancelled at shutdown", extra={"cancelled": len(pending)})
            await asyncio.wait(pending)


def _log_crash(task: asyncio.Task[None]) -> None:
    # The invoker turns handler errors into journal records; anything escaping it is a
    # bug in the worker, and the attempt is left to its lease.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("dispatch task crashed", exc_info=exc)


async def _committed(commit: asyncio.Future[set[tuple[str, int]]], msg: Message) -> bool:
    topic, partition, _ = position(msg)
    return (topic, partition) in await asyncio.shield(commit)
