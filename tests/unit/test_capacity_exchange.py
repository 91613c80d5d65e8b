"""How the scheduler routes a deployment's demands, grants and releases in one batch,
against real partition state in RocksDB and without a broker."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.codec.records import WireCodec
from pipeline.core.deployment import DeploymentLimit
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.limits import RuleSet
from pipeline.core.model import CapacityKind, CapacityMessage, InvocationRequest, Target
from pipeline.core.state import Invocation
from pipeline.runtime.scheduler.capacity import CapacityExchange, home_partition
from pipeline.runtime.scheduler.partition_state import PartitionState
from pipeline.runtime.scheduler.queue_pump import RulesInForce
from pipeline.runtime.state_store import StateStore

CODEC = WireCodec()
PARTITIONS = 4
HOME = home_partition("Pool", PARTITIONS)
OTHER = (HOME + 1) % PARTITIONS


@pytest.fixture
def states(tmp_path: Path) -> Iterator[dict[int, PartitionState]]:
    store = StateStore(tmp_path, "group", "instance")
    yield {p: PartitionState(store, p, CODEC) for p in range(PARTITIONS)}
    store.close()


def rules(cap: int | None) -> RulesInForce:
    rules = RulesInForce()
    limits = () if cap is None else (DeploymentLimit("Pool", cap),)
    rules.put(RuleSet(1, deployments=limits))
    return rules


def awaiting(state: PartitionState, invocation_id: str, since: int) -> None:
    request = InvocationRequest(invocation_id, Target("Pool", "work"), b"", 0)
    state.put_invocation(
        Invocation(
            request,
            InvocationStatus.AWAITING_CAPACITY,
            deployment="Pool",
            awaiting_since_ms=since,
        )
    )


class Starts:
    """Stands in for the scheduler: a granted invocation starts, so no longer awaits."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def __call__(self, state: PartitionState, invocation_id: str, deployment: str) -> None:
        self.started.append(invocation_id)
        invocation = state.invocation(invocation_id)
        assert invocation is not None and deployment == "Pool"
        state.put_invocation(replace(invocation, status=InvocationStatus.RUNNING))


def test_a_local_home_grants_in_the_same_batch_in_arrival_order(
    states: dict[int, PartitionState],
) -> None:
    exchange, starts, sent = CapacityExchange(PARTITIONS), Starts(), []
    for i, since in enumerate((30, 10, 20)):
        awaiting(states[OTHER], f"i{i}", since)
        exchange.request(states, OTHER, "Pool")
    exchange.settle(states, rules(2), starts)
    exchange.flush(lambda partition, message: sent.append((partition, message)))
    assert starts.started == ["i1", "i2"] and sent == []
    load = states[HOME].deployment_load("Pool")
    assert (load.running, load.waiting) == (2, 1)
    exchange.release(states, OTHER, "Pool")
    exchange.settle(states, rules(2), starts)
    assert starts.started == ["i1", "i2", "i0"]


def test_messages_for_partitions_held_elsewhere_go_out_summed(
    states: dict[int, PartitionState],
) -> None:
    exchange, starts, sent = CapacityExchange(PARTITIONS), Starts(), []
    remote = {p: s for p, s in states.items() if p != HOME}
    for i in range(3):
        awaiting(states[OTHER], f"i{i}", i)
        exchange.request(remote, OTHER, "Pool")
    exchange.settle(remote, rules(2), starts)
    exchange.flush(lambda partition, message: sent.append((partition, message)))
    assert sent == [(HOME, CapacityMessage(CapacityKind.DEMAND, "Pool", OTHER, 3))]
    # The home, in another process, reads it and grants two back.
    home_only = {HOME: states[HOME]}
    exchange.on_message(states[HOME], sent[0][1], starts)
    exchange.settle(home_only, rules(2), starts)
    sent.clear()
    exchange.flush(lambda partition, message: sent.append((partition, message)))
    assert sent == [(OTHER, CapacityMessage(CapacityKind.GRANT, "Pool", OTHER, 2))]
    exchange.on_message(states[OTHER], sent[0][1], starts)
    assert starts.started == ["i0", "i1"]


def test_a_unit_no_awaiting_invocation_takes_goes_back_to_the_home(
    states: dict[int, PartitionState],
) -> None:
    exchange, starts, sent = CapacityExchange(PARTITIONS), Starts(), []
    grant = CapacityMessage(CapacityKind.GRANT, "Pool", OTHER, 1)
    exchange.on_message(states[OTHER], grant, starts)
    exchange.flush(lambda partition, message: sent.append((partition, message)))
    assert sent == [(HOME, CapacityMessage(CapacityKind.RELEASE, "Pool", OTHER, 1))]


def test_a_raised_cap_grants_what_waits_once_recounted(
    states: dict[int, PartitionState],
) -> None:
    exchange, starts = CapacityExchange(PARTITIONS), Starts()
    for i in range(3):
        awaiting(states[OTHER], f"i{i}", i)
        exchange.request(states, OTHER, "Pool")
    exchange.settle(states, rules(0), starts)
    assert starts.started == []
    exchange.recount_all(states)  # what the scheduler does on new rules or assignment
    exchange.settle(states, rules(None), starts)
    assert starts.started == ["i0", "i1", "i2"]
