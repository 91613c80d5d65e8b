"""Every topic pipeline uses: name under a prefix, partitions, replication, configs.

The runtime topics (`invocations`, `journal`, `dispatch`, `queue-state` and the
scheduler's changelog) are co-partitioned: they share one partition count so that the
scheduler of partition p owns partition p of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_DAY_MS = 24 * 3600 * 1000

COMPACTED: dict[str, str] = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
MAX_MESSAGE_BYTES = "max.message.bytes"
MIN_INSYNC_REPLICAS = "min.insync.replicas"
# The dead-letter topic takes a copy of any record of the others plus its reason.
DEAD_LETTER_HEADROOM = 64 * 1024


def min_insync_replicas(replication_factor: int) -> int:
    """min(2, rf): with acks=all, an acknowledged record is on at least 2 brokers
    whenever the topic has 2 copies. RF 3 keeps producing with one broker down; RF 2
    stops producing while either is down (durability over availability); RF 1 gets 1,
    set explicitly so a cluster default of 2 cannot make the topic unwritable."""
    return min(2, replication_factor)


def _retained(days: int) -> dict[str, str]:
    return {"cleanup.policy": "delete", "retention.ms": str(days * _DAY_MS)}


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopicNames:
    prefix: str = "pipeline."

    @property
    def invocations(self) -> str:
        return f"{self.prefix}invocations"

    @property
    def journal(self) -> str:
        return f"{self.prefix}journal"

    @property
    def dispatch(self) -> str:
        return f"{self.prefix}dispatch"

    @property
    def queue_state(self) -> str:
        return f"{self.prefix}queue-state"

    @property
    def scheduler_state(self) -> str:
        """Changelog of the scheduler's per-partition state (compacted)."""
        return f"{self.prefix}scheduler-state"

    @property
    def results(self) -> str:
        return f"{self.prefix}results"

    @property
    def services(self) -> str:
        """Control topic: service definitions announced by worker deployments."""
        return f"{self.prefix}control.services"

    @property
    def limits(self) -> str:
        """Control topic: the limit rule set, one record under the key `rules`."""
        return f"{self.prefix}control.limits"

    @property
    def streams(self) -> str:
        return f"{self.prefix}streams"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}dead-letter"

    def group(self, role: str) -> str:
        """Consumer group id of a processor role, under the same prefix."""
        return f"{self.prefix}{role}"


@dataclass(frozen=True, slots=True)
class TopicCatalogue:
    names: TopicNames
    runtime_partitions: int = 8
    results_partitions: int = 8
    replication_factor: int = 1
    max_record_bytes: int = 2 * 1024 * 1024

    @property
    def dead_letter_record_bytes(self) -> int:
        return self.max_record_bytes + DEAD_LETTER_HEADROOM

    def specs(self) -> tuple[TopicSpec, ...]:
        n, rf = self.names, self.replication_factor
        runtime = self.runtime_partitions
        isr = {MIN_INSYNC_REPLICAS: str(min_insync_replicas(rf))}
        sized = {MAX_MESSAGE_BYTES: str(self.max_record_bytes), **isr}
        compacted = {**COMPACTED, **sized}
        return (
            TopicSpec(n.invocations, runtime, rf, {**_retained(7), **sized}),
            TopicSpec(n.journal, runtime, rf, {**_retained(7), **sized}),
            TopicSpec(n.dispatch, runtime, rf, {**_retained(1), **sized}),
            TopicSpec(n.queue_state, runtime, rf, dict(compacted)),
            TopicSpec(n.scheduler_state, runtime, rf, dict(compacted)),
            TopicSpec(n.results, self.results_partitions, rf, {**_retained(7), **sized}),
            TopicSpec(n.services, 1, rf, dict(compacted)),
            # One partition: every reader needs the one newest rule set, in write order.
            TopicSpec(n.limits, 1, rf, dict(compacted)),
            TopicSpec(n.streams, self.results_partitions, rf, {**_retained(1), **sized}),
            TopicSpec(
                n.dead_letter,
                1,
                rf,
                {
                    **_retained(30),
                    MAX_MESSAGE_BYTES: str(self.dead_letter_record_bytes),
                    **isr,
                },
            ),
        )
