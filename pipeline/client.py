"""The Python client: send invocations to Kafka and wait for their results.

`send` returns once Kafka acknowledged the request, so a returned id is durable. `call`
sends and then reads the id's partition of `results` from the end offset it noted
before sending, so it cannot miss the result however fast the handler is.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from pipeline.codec.records import WireCodec
from pipeline.core import ids
from pipeline.core.model import (
    DEFAULT_PRIORITY,
    InvocationRequest,
    InvocationResult,
    ResultStatus,
    Target,
)
from pipeline.core.partitioning import partition_for
from pipeline.core.payload import request_too_large
from pipeline.errors import RetryableError, TerminalError, ValidationError
from pipeline.kafka.access import check_access
from pipeline.runtime.tracing import inject_headers
from pipeline.sdk.serde import JsonSerde, Serde
from pipeline.settings import Settings


class InvocationFailed(TerminalError):
    """`call` found a failed result; `result` holds it whole."""

    def __init__(self, result: InvocationResult) -> None:
        failure = result.failure
        message = failure.message if failure is not None else "failed"
        super().__init__(f"invocation {result.invocation_id} failed: {message}")
        self.result = result


def new_invocation_id() -> str:
    return f"inv-{uuid.uuid4().hex}"


class Client:
    def __init__(self, settings: Settings, *, codec: WireCodec | None = None) -> None:
        self._settings = settings
        self._names = settings.topic_names
        self._codec = codec or WireCodec()
        self._serde: Serde[Any] = JsonSerde()
        self._cluster = settings.cluster.as_role("client")
        # A wrong password fails here, with a message, rather than as sends that hang.
        check_access(self._cluster)
        self._producer = Producer(
            self._cluster.client({"enable.idempotence": True, "acks": "all", "linger.ms": 0})
        )

    # -- sending ---------------------------------------------------------------------

    def request(
        self,
        target: str | Target,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
        scope: str | None = None,
        limit_key: str | None = None,
        priority: int = DEFAULT_PRIORITY,
        invocation_id: str | None = None,
        serde: Serde[Any] | None = None,
    ) -> InvocationRequest:
        """Build (and validate) a request without sending it."""
        parsed = Target.parse(target) if isinstance(target, str) else target
        if invocation_id is None:
            invocation_id = (
                ids.idempotent_id(parsed, idempotency_key)
                if idempotency_key is not None
                else new_invocation_id()
            )
        return InvocationRequest(
            id=invocation_id,
            target=parsed,
            input=(serde or self._serde).serialize(payload),
            created_at_ms=time.time_ns() // 1_000_000,
            headers=tuple(inject_headers(headers)),
            idempotency_key=idempotency_key,
            scope=scope,
            limit_key=limit_key,
            priority=priority,
        )

    def send(self, target: str | Target, payload: Any = None, **options: Any) -> str:
        """Send one invocation; returns its id once Kafka has it."""
        request = self.request(target, payload, **options)
        self.send_requests([request])
        return request.id

    def send_requests(self, requests: Iterable[InvocationRequest], *, flush: bool = True) -> None:
        errors: list[str] = []

        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                errors.append(str(err))

        requests = list(requests)
        limits = self._settings.payload_limits
        for request in requests:
            too_large = request_too_large(request, limits)
            if too_large is not None:
                # The scheduler would dead-letter it; refused here (before any is sent),
                # the caller hears why.
                raise ValidationError(f"{too_large} (PIPELINE_MAX_REQUEST_BYTES)")
        for request in requests:
            partition = partition_for(request.partition_key, self._settings.runtime_partitions)
            while True:
                try:
                    self._producer.produce(
                        self._names.invocations,
                        self._codec.encode_request(request),
                        request.partition_key.encode(),
                        partition=partition,
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)
        if flush:
            self.flush()
        if errors:
            raise RetryableError(f"Kafka did not take {len(errors)} request(s): {errors[0]}")

    def flush(self, timeout_s: float = 30.0) -> None:
        if self._producer.flush(timeout_s) > 0:
            raise RetryableError(f"requests still unacknowledged after {timeout_s} s")

    # -- results ---------------------------------------------------------------------

    def call(
        self, target: str | Target, payload: Any = None, *, timeout_s: float = 30.0, **options: Any
    ) -> Any:
        """Send and wait for the result; returns the output, raises InvocationFailed."""
        request = self.request(target, payload, **options)
        start = self._end_offset(request.id)
        self.send_requests([request])
        result = self.result(request.id, timeout_s=timeout_s, from_offset=start)
        if result.status is ResultStatus.FAILED:
            raise InvocationFailed(result)
        return self._serde.deserialize(result.output or b"null")

    async def acall(self, target: str | Target, payload: Any = None, **options: Any) -> Any:
        return await asyncio.to_thread(self.call, target, payload, **options)

    async def asend(self, target: str | Target, payload: Any = None, **options: Any) -> str:
        return await asyncio.to_thread(self.send, target, payload, **options)

    def result(
        self, invocation_id: str, *, timeout_s: float = 30.0, from_offset: int | None = None
    ) -> InvocationResult:
        """The result of an invocation, waiting up to `timeout_s` for it to appear."""
        partition = self._results_partition(invocation_id)
        start = OFFSET_BEGINNING if from_offset is None else from_offset
        key = invocation_id.encode()
        consumer = self._results_consumer([TopicPartition(self._names.results, partition, start)])
        try:
            deadline = time.monotonic() + timeout_s
            while (remaining := deadline - time.monotonic()) > 0:
                message = consumer.poll(min(remaining, 0.5))
                if message is None or message.error() is not None:
                    continue
                if message.key() == key:
                    return self._codec.decode_result(message.value() or b"")
        finally:
            consumer.close()
        raise TimeoutError(f"no result for invocation {invocation_id!r} within {timeout_s} s")

    def tail_results(self, *, from_beginning: bool = False) -> Iterator[InvocationResult]:
        """Every result as it is committed, over all partitions of `results`."""
        metadata = self._producer.list_topics(self._names.results, timeout=10)
        partitions = sorted(metadata.topics[self._names.results].partitions)
        offset = OFFSET_BEGINNING if from_beginning else -1  # -1: OFFSET_END
        consumer = self._results_consumer(
            [TopicPartition(self._names.results, p, offset) for p in partitions]
        )
        try:
            while True:
                message = consumer.poll(0.5)
                if message is None or message.error() is not None:
                    continue
                yield self._codec.decode_result(message.value() or b"")
        finally:
            consumer.close()

    def close(self) -> None:
        self._producer.flush(10)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _results_partition(self, invocation_id: str) -> int:
        return partition_for(invocation_id, self._settings.results_partitions)

    def _end_offset(self, invocation_id: str, timeout_s: float = 10.0) -> int:
        tp = TopicPartition(self._names.results, self._results_partition(invocation_id))
        consumer = self._results_consumer([])
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    _, high = consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
                    return int(high)
                except KafkaException as exc:
                    # A just-created topic answers "not leader" for a moment.
                    if time.monotonic() > deadline:
                        raise RetryableError(f"cannot read the end of {tp.topic}: {exc}") from exc
                    time.sleep(0.1)
        finally:
            consumer.close()

    def _results_consumer(self, partitions: list[TopicPartition]) -> Consumer:
        consumer = Consumer(
            self._cluster.client(
                {
                    "group.id": self._names.group("client"),
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 10,
                }
            )
        )
        if partitions:
            consumer.assign(partitions)
        return consumer
