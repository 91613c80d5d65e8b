"""One record, sent and confirmed: for control writes a person or a CLI waits on."""

from __future__ import annotations

import threading

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline.errors import RetryableError


def send_confirmed(
    producer: Producer,
    topic: str,
    key: bytes,
    value: bytes,
    *,
    partition: int,
    what: str,
    timeout_s: float,
    on_timeout: str,
) -> None:
    """Produce, flush, and raise `RetryableError` unless Kafka acknowledged the record.

    `what` names the record in messages; `on_timeout` says what the caller should do
    when the acknowledgement did not come in time (the record may still land).
    """
    acked = threading.Event()
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        # Runs in whichever thread serves delivery reports, maybe another caller's flush.
        if err is not None:
            errors.append(err)
        acked.set()

    try:
        producer.produce(topic, value, key, partition=partition, on_delivery=on_delivery)
    except (BufferError, KafkaException) as exc:
        raise RetryableError(f"{what} not sent: Kafka producer refused it ({exc}); retry") from exc
    producer.flush(timeout_s)
    if not acked.is_set():
        raise RetryableError(
            f"{what} not acknowledged by Kafka within {timeout_s:g} s: {on_timeout}",
            retry_after_ms=1_000,
        )
    if errors:
        raise RetryableError(f"{what} not written to {topic}: {errors[0].str()}; retry")
