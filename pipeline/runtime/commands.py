"""Operator commands to the scheduler, produced to the `invocations` topic.

A command goes to the partition of the invocation's partition key, the one whose
scheduler owns the invocation's state: the scheduler cannot forward a command the way it
forwards a request, because a command carries only the invocation id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Producer

from pipeline.codec.records import WireCodec
from pipeline.core.model import ResumeInvocation
from pipeline.core.partitioning import partition_for
from pipeline.core.state import Invocation
from pipeline.errors import ValidationError
from pipeline.runtime.clock import wall_clock_ms
from pipeline.runtime.confirmed_send import send_confirmed
from topics import TopicNames

log = logging.getLogger(__name__)

DEFAULT_ACK_TIMEOUT_S = 10.0

Clock = Callable[[], int]


class InvocationCommandProducer:
    """Sends commands about existing invocations; each call returns once Kafka has it.

    Safe to share between threads (the Admin API serves routes on a thread pool):
    confluent-kafka's producer is thread-safe and each call waits for its own record.
    """

    def __init__(
        self,
        bootstrap: str,
        names: TopicNames,
        runtime_partitions: int,
        codec: WireCodec,
        *,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
        clock: Clock = wall_clock_ms,
    ) -> None:
        if not bootstrap:
            raise ValidationError(
                "kafka_bootstrap_servers is empty: set KAFKA_BOOTSTRAP_SERVERS "
                "(`pipeline kafka start` prints the address of the local broker)"
            )
        if runtime_partitions < 1:
            raise ValidationError(f"runtime_partitions {runtime_partitions} must be at least 1")
        self._topic = names.invocations
        self._runtime_partitions = runtime_partitions
        self._codec = codec
        self._ack_timeout_s = ack_timeout_s
        self._clock = clock
        self._closed = False
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                # A retried send must not reorder the command behind later input of the
                # same invocation, nor land twice.
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 0,
                "client.id": "pipeline-commands",
            }
        )

    def resume(self, invocation: Invocation) -> None:
        """Ask the scheduler to resume this invocation (it acts only if still paused)."""
        self.resume_id(invocation.id, invocation.request.partition_key)

    def resume_id(self, invocation_id: str, partition_key: str) -> None:
        """Ask the scheduler to resume an invocation known only by id and partition key.

        The partition key is the invocation's scope if it has one, else `Service/key`
        for a keyed service, else its id. A wrong key sends the command to a partition
        that does not hold the invocation, and the scheduler there ignores it.
        """
        command = ResumeInvocation(invocation_id, self._clock())
        self._send(
            partition_key, self._codec.encode_resume(command), f"resume of {invocation_id!r}"
        )

    def close(self, timeout_s: float = DEFAULT_ACK_TIMEOUT_S) -> None:
        """Wait up to `timeout_s` for unacknowledged commands, then release the client."""
        if self._closed:
            return
        self._closed = True
        remaining: int = self._producer.flush(timeout_s)
        if remaining:
            log.warning("command producer closed with %d command(s) unacknowledged", remaining)
            # The producer's close waits for every queued record without a time limit.
            self._producer.purge()
            self._producer.flush(0)
        self._producer.close()

    def _send(self, key: str, value: bytes, what: str) -> None:
        send_confirmed(
            self._producer,
            self._topic,
            key.encode(),
            value,
            partition=partition_for(key, self._runtime_partitions),
            what=what,
            timeout_s=self._ack_timeout_s,
            # It may yet land, which is harmless: the scheduler ignores a resume of an
            # invocation that is no longer paused.
            on_timeout="check that the broker is reachable, then retry",
        )
