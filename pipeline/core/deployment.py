"""Worker-pool (deployment) limits: a cap on attempts running across all workers of a service.

A deployment is the pool of workers that serve one service, and it is named after the
service. Its cap is counted on one partition, the deployment's home, because queues
on every partition start its work:

- an invocation its queue admitted, whose deployment has a cap, awaits capacity; its
  partition asks the home for one unit (`demanded`);
- the home grants units while fewer than the cap are out, taking the asking partitions
  in turn, one unit each, so that a partition with a deep backlog cannot starve the
  others (`granted`);
- the partition starts its awaiting invocations in (priority, arrival) order with the
  units it got, and each attempt gives its unit back when it ends (`released`).

Demands, grants and releases travel through Kafka inside the scheduler's transactions,
so each demand is granted once and each grant released once, also across crashes:
the units out never exceed the cap. Attempts that were already running when a cap was
first set hold no unit and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.core.model import MAX_AVRO_INT, NAME_PATTERN
from pipeline.errors import ValidationError


def check_deployment_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValidationError(
            f"deployment {name!r} is not a service name: 1-128 characters of "
            "[A-Za-z0-9_.-], starting with a letter or '_'"
        )
    return name


@dataclass(frozen=True, slots=True)
class DeploymentLimit:
    """At most `concurrency` attempts of the deployment's service run at once.

    0 holds every new start, which drains the pool (e.g. before maintenance).
    """

    deployment: str
    concurrency: int

    def __post_init__(self) -> None:
        check_deployment_name(self.deployment)
        if not 0 <= self.concurrency <= MAX_AVRO_INT:
            raise ValidationError(
                f"deployment {self.deployment!r}: concurrency {self.concurrency} must be "
                f">= 0 and <= {MAX_AVRO_INT}"
            )


@dataclass(frozen=True, slots=True)
class Grant:
    """`count` units of capacity for the invocations awaiting it on `partition`."""

    partition: int
    count: int


@dataclass(frozen=True, slots=True)
class DeploymentLoad:
    """The home partition's count of a deployment's capacity.

    `running` counts units granted and not released yet; `demand` holds, per asking
    partition (ascending), the units it still waits for. `turn` is the partition served
    first at the next grant.
    """

    deployment: str
    running: int = 0
    demand: tuple[tuple[int, int], ...] = ()
    turn: int = 0

    @property
    def waiting(self) -> int:
        return sum(count for _, count in self.demand)

    @property
    def is_idle(self) -> bool:
        return self.running == 0 and not self.demand


def demanded(load: DeploymentLoad, partition: int, count: int) -> DeploymentLoad:
    """`partition` asks for `count` more units."""
    if count <= 0:
        return load
    demand = dict(load.demand)
    demand[partition] = demand.get(partition, 0) + count
    return replace(load, demand=tuple(sorted(demand.items())))


def released(load: DeploymentLoad, count: int) -> DeploymentLoad:
    """`count` granted units came back: their attempts ended."""
    # Never below 0: a release is only sent for a unit that was granted, but a count
    # that went wrong must not turn into extra capacity forever.
    return replace(load, running=max(0, load.running - count))


def granted(
    load: DeploymentLoad, limit: DeploymentLimit | None
) -> tuple[DeploymentLoad, tuple[Grant, ...]]:
    """The units to grant now, and the load once they are out.

    Without a limit every demand is granted: the cap was lifted while work awaited it.
    """
    free = load.waiting if limit is None else max(0, limit.concurrency - load.running)
    if free == 0 or not load.demand:
        return load, ()
    partitions = [p for p, _ in load.demand]
    wanted = dict(load.demand)
    # Round robin from `turn`: the partitions at or after it first, then the rest.
    order = [p for p in partitions if p >= load.turn] + [p for p in partitions if p < load.turn]
    given = dict.fromkeys(order, 0)
    left = free
    last = order[0]
    while left > 0 and order:
        for partition in list(order):
            if left == 0:
                break
            given[partition] += 1
            wanted[partition] -= 1
            left -= 1
            last = partition
            if wanted[partition] == 0:
                order.remove(partition)
    grants = tuple(Grant(p, n) for p, n in sorted(given.items()) if n > 0)
    total = free - left
    return (
        replace(
            load,
            running=load.running + total,
            demand=tuple((p, n) for p, n in sorted(wanted.items()) if n > 0),
            turn=last + 1,
        ),
        grants,
    )
