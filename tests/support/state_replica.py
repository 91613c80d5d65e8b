"""The Admin API's real replica of scheduler state, filled without a broker: each row is
encoded as the scheduler writes it to the changelog and folded in as if read there."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipeline.codec.records import WireCodec
from pipeline.codec.state_keys import deployment_key, invocation_key, queue_key, scope_key
from pipeline.core.deployment import DeploymentLoad
from pipeline.core.fair_share import ScopeLoad
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.kafka.config import ClusterConfig
from pipeline.views.compacted import TopicRecord
from pipeline.views.scheduler_state import SchedulerStateView
from topics import TopicNames

_ROOT = Path(tempfile.gettempdir()) / "pipeline-test-replicas"
_CODEC = WireCodec()


def replica(
    invocations: Iterable[Invocation] = (),
    queues: Iterable[VirtualQueue] = (),
    deployments: Mapping[str, DeploymentLoad] | None = None,
    *,
    partition_of: Mapping[str, int] | None = None,
) -> SchedulerStateView:
    """A replica holding these rows; each scope's load is summed from its queues, as the
    scheduler keeps it. `partition_of` puts an invocation on a changelog partition (0)."""
    view = SchedulerStateView(ClusterConfig("127.0.0.1:1"), TopicNames("replica."), _CODEC, _ROOT)
    queues = tuple(queues)
    loads: dict[str, ScopeLoad] = {}
    for queue in queues:
        if queue.id.scope:
            loads[queue.id.scope] = loads.get(queue.id.scope, ScopeLoad(queue.id.scope)).counted(
                None, queue
            )
    rows: list[tuple[int, str, bytes]] = [
        ((partition_of or {}).get(i.id, 0), invocation_key(i.id), _CODEC.encode_invocation_state(i))
        for i in invocations
    ]
    rows += [(0, queue_key(q.id), _CODEC.encode_queue_state(q)) for q in queues]
    rows += [(0, scope_key(s), _CODEC.encode_scope_load(load)) for s, load in loads.items()]
    rows += [
        (0, deployment_key(d), _CODEC.encode_deployment_load(load))
        for d, load in (deployments or {}).items()
    ]
    fold(view, [(partition, key, value) for partition, key, value in rows])
    return view


def fold(view: SchedulerStateView, rows: Iterable[tuple[int, str, bytes | None]]) -> None:
    """Fold changelog records (partition, key, value; None a tombstone) into `view`."""
    view._fold([TopicRecord(p, n, key, value) for n, (p, key, value) in enumerate(rows)])
