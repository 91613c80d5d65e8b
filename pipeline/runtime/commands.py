"""Operator commands to the scheduler, produced to the `invocations` topic.

A command goes to the partition of the invocation's partition key, the one whose
scheduler owns the invocation's state: the scheduler cannot forward a command the way it
forwards a request, because a command carries only the invocation id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pipeline.codec.records import WireCodec
from pipeline.core.model import ResumeInvocation
from pipeline.core.partitioning import partition_for
from pipeline.core.state import Invocation
from pipeline.errors import ValidationError
from pipeline.kafka.config import ClusterConfig
from pipeline.runtime.clock import wall_clock_ms
from pipeline.runtime.confirmed_send import DEFAULT_ACK_TIMEOUT_S, ConfirmedProducer
from topics import TopicNames

log = logging.getLogger(__name__)


Clock = Callable[[], int]


class InvocationCommandProducer:
    """Sends commands about existing invocations; each call returns once Kafka has it."""

    def __init__(
        self,
        cluster: ClusterConfig,
        names: TopicNames,
        runtime_partitions: int,
        codec: WireCodec,
        *,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
        clock: Clock = wall_clock_ms,
    ) -> None:
        if runtime_partitions < 1:
            raise ValidationError(f"runtime_partitions {runtime_partitions} must be at least 1")
        self._topic = names.invocations
        self._runtime_partitions = runtime_partitions
        self._codec = codec
        self._clock = clock
        self._producer = ConfirmedProducer(
            cluster, "pipeline-commands", ack_timeout_s=ack_timeout_s
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
        self._producer.close(timeout_s)

    def _send(self, key: str, value: bytes, what: str) -> None:
        self._producer.send(
            self._topic,
            key.encode(),
            value,
            partition=partition_for(key, self._runtime_partitions),
            what=what,
            # It may yet land, which is harmless: the scheduler ignores a resume of an
            # invocation that is no longer paused.
            on_timeout="check that the broker is reachable, then retry",
        )
