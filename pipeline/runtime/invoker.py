"""Runs one dispatched attempt and reports how it ended to the journal.

Every record of an attempt goes to the journal partition with the dispatch record's
partition number: the runtime topics are co-partitioned, so that is the partition whose
scheduler dispatched the attempt and owns the invocation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from confluent_kafka import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from pipeline.codec.records import WireCodec
from pipeline.core.lease import AttemptLease
from pipeline.core.model import (
    AttemptAlive,
    AttemptCompleted,
    AttemptFailed,
    AttemptSuspended,
    DispatchOrder,
    EntryAppended,
    Failure,
    JournalRecord,
)
from pipeline.core.payload import PayloadLimits, cut_failure, output_too_large, too_large_failure
from pipeline.errors import LeaseLost, RateLimited, RetryableError, Suspended, TerminalError
from pipeline.runtime.clock import wall_clock_ms
from pipeline.runtime.kafka_clients import AsyncProducer
from pipeline.runtime.tracing import extract_context, inject_headers
from pipeline.sdk.context import Context
from pipeline.sdk.service import Handler, Service

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JournalPartition:
    """Where the records of one attempt go: a topic partition, keyed like the dispatch."""

    topic: str
    partition: int
    key: bytes


class KafkaJournalWriter:
    """`JournalWriter` of the SDK, backed by the worker's idempotent producer.

    A step's entry counts for the handler only if Kafka acknowledged it while the
    attempt's lease was still held (see `pipeline.core.lease`): an entry acknowledged
    later may sit behind the scheduler's fence and be dropped, and its step would then
    run again in the next attempt after the handler had seen its result. Heartbeats
    renew the lease between steps.
    """

    def __init__(
        self,
        producer: AsyncProducer,
        codec: WireCodec,
        destination: JournalPartition,
        order: DispatchOrder,
        lease: AttemptLease,
        committed: Awaitable[bool],
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._committed = committed
        self._producer = producer
        self._codec = codec
        self._destination = destination
        self._alive = AttemptAlive(order.request.id, order.attempt)
        # The heartbeat that says the attempt was taken (set by the invoker).
        self.taken: Awaitable[bool] | None = None
        self.lease = lease
        self.last_report_ms = 0
        self._clock = clock

    async def ready(self) -> None:
        # The first step also waits until the heartbeat saying the attempt was taken is
        # in the journal: from then on a crash of this worker is noticed within the
        # heartbeat timeout, not the dispatch's lease. Both waits run in parallel.
        if self.taken is not None:
            await self.taken
        if not await self._committed:
            # The dispatch may be delivered again; a step run now could then run twice.
            raise LeaseLost("the dispatch offset could not be committed")
        # Checked right before the step's action runs, in the same turn of the loop: a
        # worker that thaws after a freeze past its lease must not run the action
        # beside the next attempt, though its journal entry would be refused anyway.
        if not self.lease.held_at(self._clock()):
            raise LeaseLost(f"lease of attempt {self._alive.attempt} ran out before its next step")

    async def append(self, record: EntryAppended) -> None:
        sent_at = self._clock()
        if not self.lease.held_at(sent_at):
            raise LeaseLost(
                f"lease of attempt {record.attempt} ran out before step {record.entry.index}"
            )
        await self._report(record, sent_at)
        if not self.lease.held_at(self._clock()):
            raise LeaseLost(f"step {record.entry.index} acknowledged after the lease ran out")
        self.lease = self.lease.renewed(sent_at)

    async def heartbeat(self) -> bool:
        """Renew the lease; False once it is lost (the attempt then stops at its next
        step, and the scheduler retries it)."""
        sent_at = self._clock()
        if not self.lease.held_at(sent_at):
            return False
        try:
            await self._report(self._alive, sent_at)
        except RetryableError as exc:
            # Not renewed: the lease runs out unless a later heartbeat gets through.
            log.warning("heartbeat not journaled", extra={"error": str(exc)})
            return self.lease.held_at(self._clock())
        if not self.lease.held_at(self._clock()):
            return False
        self.lease = self.lease.renewed(sent_at)
        return True

    def _report(self, record: JournalRecord, sent_at: int) -> asyncio.Future[Message]:
        self.lease = self.lease.reporting(sent_at)
        self.last_report_ms = sent_at
        return self.send(record)

    def send(self, record: JournalRecord) -> asyncio.Future[Message]:
        # Sent here, synchronously, so that records leave in the order they were
        # appended; only the wait for the ack is deferred.
        return self._producer.send(
            self._destination.topic,
            self._codec.encode_journal(record),
            key=self._destination.key,
            partition=self._destination.partition,
            headers=inject_headers(),  # the current span: the attempt, or its `run` step
        )


def _log_if_lost(acked: asyncio.Future[Message]) -> None:
    if not acked.cancelled() and acked.exception() is not None:
        log.error(
            "journal record lost; the lease will recover the attempt",
            extra={"error": acked.exception()},
        )


def attempt_failed(order: DispatchOrder, error: Exception) -> AttemptFailed:
    """The journal record of an attempt that ended with `error`."""
    error_type = type(error).__name__
    if isinstance(error, TerminalError):
        failure = Failure(error.message, error_type, terminal=True, code=error.code)
        return AttemptFailed(order.request.id, order.attempt, failure)
    if isinstance(error, RetryableError):  # NonDeterminismError included
        failure = Failure(error.message, error_type, terminal=False)
        return AttemptFailed(
            order.request.id,
            order.attempt,
            failure,
            retry_after_ms=error.retry_after_ms,
            hold_queue=isinstance(error, RateLimited),
        )
    failure = Failure(f"{error_type}: {error}", error_type, terminal=False)
    return AttemptFailed(order.request.id, order.attempt, failure)


class Invoker:
    """Looks up the handler of a dispatch order, runs it, and journals the outcome."""

    def __init__(
        self,
        services: Sequence[Service],
        *,
        producer: AsyncProducer,
        codec: WireCodec,
        journal_topic: str,
        tracer: trace.Tracer,
        lease_timeout_ms: int,
        heartbeat_timeout_ms: int,
        lease_margin_ms: int,
        limits: PayloadLimits | None = None,
    ) -> None:
        self._limits = limits if limits is not None else PayloadLimits()
        self._services: Mapping[str, Service] = {s.name: s for s in services}
        self._producer = producer
        self._codec = codec
        self._journal_topic = journal_topic
        self._tracer = tracer
        self._lease_timeout_ms = lease_timeout_ms
        self._heartbeat_timeout_ms = heartbeat_timeout_ms
        self._lease_margin_ms = lease_margin_ms
        self._running: set[KafkaJournalWriter] = set()
        self._heartbeats: set[asyncio.Future[bool]] = set()

    async def keep_leases(self, interval_ms: int) -> None:
        """Every `interval_ms`, a heartbeat for each running attempt that reported
        nothing for that long. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval_ms / 1000)
            now = wall_clock_ms()
            for writer in list(self._running):
                if now - writer.last_report_ms >= interval_ms:
                    self._heartbeat(writer)

    def _heartbeat(self, writer: KafkaJournalWriter) -> asyncio.Future[bool]:
        beat = asyncio.ensure_future(writer.heartbeat())
        self._heartbeats.add(beat)
        beat.add_done_callback(self._heartbeats.discard)
        return beat

    def find(self, order: DispatchOrder) -> Handler | None:
        service = self._services.get(order.request.target.service)
        return service.find(order.request.target.handler) if service is not None else None

    async def invoke(
        self,
        order: DispatchOrder,
        partition: int,
        dispatched_at_ms: int,
        committed: Awaitable[bool],
    ) -> None:
        """Run attempt `order.attempt` and append its outcome to journal `partition`.

        Exceptions of the handler become the outcome; only `BaseException`s that are not
        `Exception`s escape. A cancelled attempt (worker shutdown) is reported as failed
        so that the scheduler retries it at once instead of waiting out its lease.
        """
        request = order.request
        destination = JournalPartition(
            self._journal_topic, partition, request.partition_key.encode()
        )
        lease = AttemptLease.dispatched(
            dispatched_at_ms,
            lease_timeout_ms=self._lease_timeout_ms,
            heartbeat_timeout_ms=self._heartbeat_timeout_ms,
            margin_ms=self._lease_margin_ms,
        )
        if not lease.held_at(wall_clock_ms()):
            # Waited in `dispatch` past its lease: the scheduler fences it and dispatches
            # the next attempt; running this one would only race that one.
            log.info(
                "dispatch skipped: its lease ran out before a slot was free",
                extra={"invocation_id": request.id, "attempt": order.attempt},
            )
            return
        writer = KafkaJournalWriter(
            self._producer, self._codec, destination, order, lease, committed
        )
        # Taken: tell the scheduler at once, so that from now on it fences the attempt
        # within the heartbeat timeout if this worker dies.
        writer.taken = asyncio.shield(self._heartbeat(writer))
        self._running.add(writer)
        try:
            await self._invoke(order, writer)
        finally:
            self._running.discard(writer)

    async def _invoke(self, order: DispatchOrder, writer: KafkaJournalWriter) -> None:
        request = order.request
        with self._tracer.start_as_current_span(
            f"attempt {request.target}",
            context=extract_context(request.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "pipeline.invocation_id": request.id,
                "pipeline.attempt": order.attempt,
                "pipeline.target": str(request.target),
                "pipeline.replay_entries": len(order.journal),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                record = await self._attempt(order, writer, span)
            except LeaseLost as lost:
                span.set_status(Status(StatusCode.ERROR, str(lost)))
                log.info(
                    "attempt abandoned: %s",
                    lost,
                    extra={"invocation_id": request.id, "attempt": order.attempt},
                )
                return
            except asyncio.CancelledError:
                stopped = Failure("the worker stopped before the attempt finished", "Cancelled")
                # Not awaited: the worker flushes the producer on its way out.
                writer.send(AttemptFailed(request.id, order.attempt, stopped)).add_done_callback(
                    _log_if_lost
                )
                span.set_status(Status(StatusCode.ERROR, stopped.message))
                raise
            if isinstance(record, AttemptFailed):
                span.set_status(Status(StatusCode.ERROR, record.failure.message))
                span.set_attribute("pipeline.failure.terminal", record.failure.terminal)
            try:
                await writer.send(record)
            except RetryableError as exc:
                # The scheduler's lease expires and fences this attempt; nothing to undo.
                log.error(
                    "attempt outcome not journaled; its lease will expire",
                    extra={"invocation_id": request.id, "attempt": order.attempt, "error": exc},
                )
                return
            log.debug(
                "attempt finished",
                extra={
                    "invocation_id": request.id,
                    "attempt": order.attempt,
                    "target": str(request.target),
                    "outcome": type(record).__name__,
                },
            )

    async def _attempt(
        self, order: DispatchOrder, writer: KafkaJournalWriter, span: trace.Span
    ) -> AttemptCompleted | AttemptFailed | AttemptSuspended:
        handler = self.find(order)
        if handler is None:
            known = ", ".join(sorted(self._services)) or "none"
            # Retryable: a deployment that has the handler may be rolling out.
            return AttemptFailed(
                order.request.id,
                order.attempt,
                Failure(
                    f"no handler {order.request.target} on this worker; it has services: {known}",
                    "HandlerNotFound",
                ),
            )
        ctx = Context(
            order,
            writer,
            tracer=self._tracer,
            request_encoder=self._codec.encode_request,
            clock_ms=wall_clock_ms,
            limits=self._limits,
        )
        try:
            output = await handler.invoke(ctx, order.request.input)
        except Exception as exc:
            span.record_exception(exc)
            failed = attempt_failed(order, exc)
            return replace(failed, failure=cut_failure(failed.failure, self._limits))
        except Suspended as suspended:
            if ctx.nondeterminism is not None:
                return attempt_failed(order, ctx.nondeterminism)
            span.set_attribute("pipeline.suspended_on", suspended.awaiting_index)
            return AttemptSuspended(order.request.id, order.attempt, suspended.awaiting_index)
        if ctx.nondeterminism is not None:
            # The handler caught the mismatch; its result rests on a journal it does not
            # match, so it must not become the invocation's result.
            return attempt_failed(order, ctx.nondeterminism)
        too_large = output_too_large(output, self._limits)
        if too_large is not None:
            # Not sent: the scheduler would refuse it the same way, after carrying it.
            return AttemptFailed(order.request.id, order.attempt, too_large_failure(too_large))
        return AttemptCompleted(order.request.id, order.attempt, output)
