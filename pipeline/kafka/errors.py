"""What a Kafka error means for the client that reported it."""

from __future__ import annotations

from confluent_kafka import KafkaError


def is_fatal(error: KafkaError | None) -> bool:
    """The client that reported `error` is unusable for good and must be replaced.

    librdkafka reports a fatal error to a consumer (and in a produce call's exception)
    as an error with the code `_FATAL`, whose `fatal()` flag confluent-kafka leaves
    False: only errors made from an `rd_kafka_error_t` carry the flag. Checking the flag
    alone missed the static member fenced after a broker restart, and the worker never
    fetched again.
    """
    return error is not None and (error.fatal() or error.code() == KafkaError._FATAL)
