"""A producer for control writes a person or a CLI waits on: one record, confirmed."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline.errors import RetryableError
from pipeline.kafka.config import ClusterConfig

log = logging.getLogger(__name__)

DEFAULT_ACK_TIMEOUT_S = 10.0


class ConfirmedProducer:
    """Each `send` returns once Kafka acknowledged the record, or raises `RetryableError`.

    Safe to share between threads (the Admin API serves routes on a thread pool):
    confluent-kafka's producer is thread-safe and each call waits for its own record.
    """

    def __init__(
        self,
        cluster: ClusterConfig,
        client_id: str,
        *,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
    ) -> None:
        self._ack_timeout_s = ack_timeout_s
        self._closed = False
        self._producer = Producer(
            cluster.client(
                {
                    # A retried send must neither land twice nor behind a later record.
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 0,
                    "client.id": client_id,
                }
            )
        )

    def send(
        self, topic: str, key: bytes, value: bytes, *, partition: int, what: str, on_timeout: str
    ) -> None:
        """`what` names the record in messages; `on_timeout` says what the caller should
        do when the acknowledgement did not come in time (the record may still land)."""
        acked = threading.Event()
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            # Runs in whichever thread serves delivery reports, maybe another caller's flush.
            if err is not None:
                errors.append(err)
            acked.set()

        try:
            self._producer.produce(topic, value, key, partition=partition, on_delivery=on_delivery)
        except (BufferError, KafkaException) as exc:
            raise RetryableError(
                f"{what} not sent: Kafka producer refused it ({exc}); retry"
            ) from exc
        self._producer.flush(self._ack_timeout_s)
        if not acked.is_set():
            raise RetryableError(
                f"{what} not acknowledged by Kafka within {self._ack_timeout_s:g} s: {on_timeout}",
                retry_after_ms=1_000,
            )
        if errors:
            raise RetryableError(f"{what} not written to {topic}: {errors[0].str()}; retry")

    def close(self, timeout_s: float = DEFAULT_ACK_TIMEOUT_S) -> None:
        """Wait up to `timeout_s` for unacknowledged records, then release the client."""
        if self._closed:
            return
        self._closed = True
        remaining: int = self._producer.flush(timeout_s)
        if remaining:
            log.warning("producer closed with %d record(s) unacknowledged", remaining)
            # The producer's close waits for every queued record without a time limit.
            self._producer.purge()
            self._producer.flush(0)
        self._producer.close()
