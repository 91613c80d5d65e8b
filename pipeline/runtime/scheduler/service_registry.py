"""The services that worker deployments announced, read from the compacted control topic."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from pipeline.codec.records import WireCodec
from pipeline.core.model import ServiceDefinition
from pipeline.errors import DecodeError
from pipeline.kafka.config import ClientConfig

log = logging.getLogger(__name__)


class ServiceRegistry:
    def __init__(self, consumer_config: ClientConfig, topic: str, codec: WireCodec) -> None:
        self._codec = codec
        self._services: dict[str, ServiceDefinition] = {}
        self._consumer = Consumer(
            {**consumer_config, "enable.partition.eof": True, "enable.auto.commit": False}
        )
        self._partition = TopicPartition(topic, 0, 0)
        self._consumer.assign([self._partition])

    def service(self, name: str) -> ServiceDefinition | None:
        return self._services.get(name)

    def poll(self) -> None:
        """Take what has arrived, without waiting."""
        for message in self._consumer.consume(1000, timeout=0):
            self._apply(message)

    def catch_up(self, timeout_s: float = 10.0) -> None:
        """Read up to the end of the topic: called at start and before rejecting a target."""
        deadline = time.monotonic() + timeout_s
        _, high = self._consumer.get_watermark_offsets(
            self._partition, timeout=timeout_s, cached=False
        )
        while self._position() < high:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"service registry did not reach offset {high} in {timeout_s} s")
            message = self._consumer.poll(min(remaining, 0.5))
            if message is not None:
                self._apply(message)

    def _position(self) -> int:
        offset: int = self._consumer.position([self._partition])[0].offset
        return max(offset, 0)

    def close(self) -> None:
        self._consumer.close()

    def _apply(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("service registry: %s", error)
            return
        raw_key, value = message.key(), message.value()
        try:
            key = (raw_key or b"").decode()
        except UnicodeDecodeError:
            # Not a service name: every name is ASCII. One bad record must not stop
            # the registry, and with it the scheduler.
            log.warning("service registry: skipping a record whose key %r is not UTF-8", raw_key)
            return
        if value is None:
            self._services.pop(key, None)
            return
        try:
            service = self._codec.decode_service(value)
        except DecodeError as exc:
            log.warning("skipping undecodable service definition %r: %s", key, exc)
            return
        self._services[service.name] = service
