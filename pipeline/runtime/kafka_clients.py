"""confluent-kafka clients for the asyncio shell: config builders and an awaitable producer.

librdkafka does its network I/O on its own threads; what the shell must supply is a
thread that serves delivery callbacks (`Producer.poll`) and a way to hand each
acknowledgement back to the event loop that is waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)

from pipeline.core.membership import session_timeout_ms
from pipeline.errors import RetryableError
from pipeline.kafka.access import check_access
from pipeline.kafka.config import ClientConfig, Role
from pipeline.settings import Settings

log = logging.getLogger(__name__)


_CLUSTER_CONFIG_TIMEOUT_S = 5.0


def joined_cluster(settings: Settings, role: Role) -> Settings:
    """Checks that the cluster lets a process of `role` in (`check_access`), and returns
    `settings` with the consumer-group session chosen for this cluster, unless set.

    Asked of one broker once, when a process starts; a cluster that does not answer in
    time, or does not let us read its configuration, gets a session every cluster
    accepts."""
    cluster = settings.cluster.as_role(role)
    admin = check_access(cluster)
    if settings.session_timeout_ms is not None:
        return settings
    floor, ceiling = _session_limits(admin) if admin is not None else (None, None)
    chosen = session_timeout_ms(floor, ceiling)
    log.info(
        "consumer-group session %d ms (the cluster accepts %s to %s ms)",
        chosen,
        floor if floor is not None else "?",
        ceiling if ceiling is not None else "?",
    )
    return settings.model_copy(update={"session_timeout_ms": chosen})


def _session_limits(admin: AdminClient) -> tuple[int | None, int | None]:
    """The cluster's `group.min/max.session.timeout.ms`, as one broker states them."""
    try:
        brokers = admin.list_topics(timeout=_CLUSTER_CONFIG_TIMEOUT_S).brokers
        resource = ConfigResource(ResourceType.BROKER, str(min(brokers)))
        future = admin.describe_configs([resource])[resource]
        entries = future.result(timeout=_CLUSTER_CONFIG_TIMEOUT_S)
        return (
            int(entries["group.min.session.timeout.ms"].value),
            int(entries["group.max.session.timeout.ms"].value),
        )
    except (KafkaException, KeyError, ValueError, TimeoutError) as exc:
        log.warning("cluster's session limits not known (%s): assuming Kafka's defaults", exc)
        return None, None


def worker_consumer_config(settings: Settings) -> ClientConfig:
    """Dispatch consumer of the worker group; offsets are committed by hand, before running."""
    return settings.cluster.as_role("worker").client(
        {
            "group.id": settings.topic_names.group("workers"),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Caps how long the broker holds an empty fetch (default 500 ms), so that a
            # dispatch the scheduler just committed is picked up within milliseconds even when
            # no append wakes the fetch early: the end-to-end p50 target is 15 ms.
            "fetch.wait.max.ms": 5,
            "fetch.min.bytes": 1,
            "client.id": "pipeline-worker",
            "socket.nagle.disable": True,
            # With an instance id, a restarted worker takes its partitions back at once
            # instead of every worker waiting for the dead one's session to time out.
            **settings.membership("worker"),
        }
    )


def journal_producer_config(settings: Settings) -> ClientConfig:
    """Idempotent producer: per partition, records land once and in the order sent."""
    return settings.cluster.as_role("worker").client(
        {
            "enable.idempotence": True,
            "acks": "all",
            # Each `ctx.run` waits for its ack and an outcome ends an invocation's latency:
            # send at once. Under load, records queued while a request is in flight batch anyway.
            "linger.ms": 0,
            "client.id": "pipeline-worker",
            "socket.nagle.disable": True,
        }
    )


class DeliveryError(RetryableError):
    """Kafka did not acknowledge a produced record; `kafka_error` says why, when it did."""

    def __init__(self, message: str, *, kafka_error: KafkaError | None = None) -> None:
        super().__init__(message)
        self.kafka_error = kafka_error


class AsyncProducer:
    """A `Producer` whose sends are awaitable: each resolves when Kafka acknowledged it.

    Records sent from the event loop are written in call order per partition (the
    producer is idempotent). One daemon thread polls for delivery reports and resolves
    the waiting futures on the loop.
    """

    def __init__(self, config: ClientConfig, *, poll_interval_s: float = 0.05) -> None:
        self._producer = Producer(dict(config))
        self._poll_interval_s = poll_interval_s
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        if self._poller is not None:
            return
        self._poller = threading.Thread(
            target=self._poll_until_stopped, name="pipeline-producer-poll", daemon=True
        )
        self._poller.start()

    def _poll_until_stopped(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(self._poll_interval_s)

    def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> asyncio.Future[Message]:
        """Hand a record to librdkafka now; the future completes with the ack.

        Must be called on the event loop thread. A record that cannot even be queued
        (full local queue, unknown partition) fails the future instead of raising, so
        callers handle one failure path.
        """
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[Message] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            # Runs on the poll thread (or in flush); the future belongs to the loop.
            try:
                loop.call_soon_threadsafe(_settle, acked, err, msg)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                log.debug("delivery report after the event loop closed", extra={"error": err})

        kwargs: dict[str, Any] = {"key": key, "headers": list(headers), "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        try:
            self._producer.produce(topic, value, **kwargs)
        except (BufferError, KafkaException) as exc:
            error = DeliveryError(f"record for {topic} not queued: {exc}")
            error.__cause__ = exc
            acked.set_exception(error)
        return acked

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding records (blocking); returns how many are still unsent."""
        remaining: int = self._producer.flush(timeout_s)
        return remaining

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush, then stop the poll thread. Blocking: call from an executor in async code."""
        remaining = self.flush(timeout_s)
        if remaining:
            log.warning("producer closed with records unacknowledged", extra={"count": remaining})
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
            self._poller = None


def _settle(acked: asyncio.Future[Message], err: KafkaError | None, msg: Message) -> None:
    if acked.done():  # the waiter was cancelled; nobody needs the outcome
        return
    if err is not None:
        acked.set_exception(
            DeliveryError(f"{msg.topic()}[{msg.partition()}]: {err.str()}", kafka_error=err)
        )
    else:
        acked.set_result(msg)
