"""Deployment capacity between partitions: demands to the home, grants back, releases.

The counting is `pipeline.core.deployment`'s; this module routes its messages within
one scheduler batch. A message for a partition this process holds is applied at once,
in the same transaction, so a single scheduler pays no extra round trip; any other is
collected, summed per (partition, deployment, kind), and produced to `invocations` on
the partition that must act on it when the batch ends.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping

from pipeline.core.deployment import demanded, granted, released
from pipeline.core.model import CapacityKind, CapacityMessage
from pipeline.core.partitioning import partition_for
from pipeline.runtime.scheduler.partition_state import PartitionState
from pipeline.runtime.scheduler.queue_pump import RulesInForce

log = logging.getLogger(__name__)

# Starts an awaiting invocation with a granted unit: (state, invocation id, deployment).
StartGranted = Callable[[PartitionState, str, str], None]
# Produces a capacity message to the partition that must act on it.
Send = Callable[[int, CapacityMessage], None]


def deployment_key(deployment: str) -> str:
    """The partition key of `deployment`'s capacity messages."""
    return "deployment:" + deployment


def home_partition(deployment: str, partitions: int) -> int:
    """The partition that counts `deployment`'s capacity."""
    return partition_for(deployment_key(deployment), partitions)


class CapacityExchange:
    def __init__(self, partitions: int) -> None:
        self._partitions = partitions
        # (to partition, kind, deployment, partition the message is about) -> units
        self._outbox: Counter[tuple[int, CapacityKind, str, int]] = Counter()
        # (home partition, deployment) whose load changed: grant what the cap allows.
        self._due: dict[tuple[int, str], None] = {}

    @property
    def pending(self) -> bool:
        return bool(self._due)

    def request(self, states: Mapping[int, PartitionState], origin: int, deployment: str) -> None:
        self._to_home(states, CapacityMessage(CapacityKind.DEMAND, deployment, origin, 1))

    def release(self, states: Mapping[int, PartitionState], origin: int, deployment: str) -> None:
        self._to_home(states, CapacityMessage(CapacityKind.RELEASE, deployment, origin, 1))

    def recount_all(self, states: Mapping[int, PartitionState]) -> None:
        """Grant again everywhere: the caps changed."""
        for partition, state in states.items():
            for deployment in state.deployments_homed():
                self._due[(partition, deployment)] = None

    def on_message(
        self, state: PartitionState, message: CapacityMessage, start: StartGranted
    ) -> None:
        """A message that arrived on `state`'s partition."""
        deployment = message.deployment
        match message.kind:
            case CapacityKind.DEMAND:
                load = demanded(state.deployment_load(deployment), message.partition, message.count)
                state.put_deployment_load(load)
                self._due[(state.partition, deployment)] = None
            case CapacityKind.RELEASE:
                state.put_deployment_load(
                    released(state.deployment_load(deployment), message.count)
                )
                self._due[(state.partition, deployment)] = None
            case CapacityKind.GRANT:
                self._take(state, deployment, message.count, start)

    def settle(
        self, states: Mapping[int, PartitionState], rules: RulesInForce, start: StartGranted
    ) -> None:
        """Grant what the caps allow, until local grants and releases stop changing loads."""
        while self._due:
            (home, deployment), _ = self._due.popitem()
            state = states.get(home)
            if state is None:
                continue
            load, grants = granted(
                state.deployment_load(deployment), rules.deployment_limit(deployment)
            )
            state.put_deployment_load(load)
            for grant in grants:
                target = states.get(grant.partition)
                if target is None:
                    key = (grant.partition, CapacityKind.GRANT, deployment, grant.partition)
                    self._outbox[key] += grant.count
                else:
                    self._take(target, deployment, grant.count, start)

    def flush(self, send: Send) -> None:
        """Produce what other processes must act on; part of the batch's transaction."""
        for (to, kind, deployment, about), count in sorted(self._outbox.items()):
            send(to, CapacityMessage(kind, deployment, about, count))
        self._outbox.clear()

    def discard(self) -> None:
        """The batch aborted: nothing it routed happened."""
        self._outbox.clear()
        self._due.clear()

    def _to_home(self, states: Mapping[int, PartitionState], message: CapacityMessage) -> None:
        home = home_partition(message.deployment, self._partitions)
        state = states.get(home)
        if state is None:
            key = (home, message.kind, message.deployment, message.partition)
            self._outbox[key] += message.count
            return
        # A demand or release never starts anything by itself: `settle` grants later.
        self.on_message(state, message, _never_starts)

    def _take(
        self, state: PartitionState, deployment: str, count: int, start: StartGranted
    ) -> None:
        """Start up to `count` awaiting invocations; give back the units none takes."""
        for taken in range(count):
            head = state.awaiting_head(deployment)
            if head is None:
                log.error(
                    "partition %d got %d units of %r and has only %d awaiting: giving %d back",
                    state.partition,
                    count,
                    deployment,
                    taken,
                    count - taken,
                )
                home = home_partition(deployment, self._partitions)
                key = (home, CapacityKind.RELEASE, deployment, state.partition)
                self._outbox[key] += count - taken
                return
            start(state, head, deployment)


def _never_starts(state: PartitionState, invocation_id: str, deployment: str) -> None:
    raise AssertionError(f"a demand or release started {invocation_id!r}")
