"""A KRaft cluster of several local nodes, each a combined broker + controller.

Every node is a voter of one static controller quorum (`controller.quorum.voters`
lists all of them) and a broker with its own ports and data dir. Layout of the
cluster's data dir:

    cluster.json   cluster id, host and every node's ports; kept after a stop, so the
                   cluster starts again on the same ports with its data
    node-<id>/     one node's data dir (layout in broker.py)

Broker settings (`cluster_properties`): replication factor min(3, nodes) for new and
internal topics, min.insync.replicas min(2, that), fencing of a dead broker within
6 s, and a dead transactional producer's open transaction aborted within about a
second of its timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from pipeline.localkafka.broker import (
    BrokerConfig,
    BrokerError,
    BrokerState,
    LocalBroker,
    choose_ports,
    quiet_logger,
    random_cluster_id,
    running_state,
    stop_brokers,
)
from topics.catalogue import min_insync_replicas

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

CLUSTER_FILE = "cluster.json"


def node_dir(cluster_dir: Path, node_id: int) -> Path:
    return cluster_dir / f"node-{node_id}"


def cluster_properties(nodes: int) -> tuple[tuple[str, str], ...]:
    rf = min(3, nodes)
    isr = str(min_insync_replicas(rf))
    return (
        ("default.replication.factor", str(rf)),
        ("min.insync.replicas", isr),
        ("offsets.topic.replication.factor", str(rf)),
        ("transaction.state.log.replication.factor", str(rf)),
        ("transaction.state.log.min.isr", isr),
        ("share.coordinator.state.topic.replication.factor", str(rf)),
        ("share.coordinator.state.topic.min.isr", isr),
        # How often the coordinator looks for transactions open past their timeout and
        # aborts them (default 10 s): a killed producer's transaction blocks
        # read_committed readers until then.
        ("transaction.abort.timed.out.transaction.cleanup.interval.ms", "1000"),
        # A killed broker is fenced, and so leaves every ISR, after this long without a
        # heartbeat (defaults 9 s and 2 s); acks=all produce waits for it meanwhile.
        ("broker.session.timeout.ms", "3000"),
        ("broker.heartbeat.interval.ms", "500"),
        # A live but stuck follower leaves the ISR after this long (default 30 s).
        ("replica.lag.time.max.ms", "10000"),
    )


@dataclass(frozen=True)
class NodeLayout:
    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True)
class ClusterLayout:
    cluster_id: str
    host: str
    nodes: tuple[NodeLayout, ...]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    @property
    def quorum_voters(self) -> str:
        return ",".join(f"{n.node_id}@{self.host}:{n.controller_port}" for n in self.nodes)

    def to_json(self) -> str:
        return json.dumps(
            {
                "cluster_id": self.cluster_id,
                "host": self.host,
                "bootstrap_servers": self.bootstrap_servers,
                "nodes": [
                    {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port}
                    for n in self.nodes
                ],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> ClusterLayout:
        raw = json.loads(text)
        return cls(
            cluster_id=str(raw["cluster_id"]),
            host=str(raw["host"]),
            nodes=tuple(
                NodeLayout(int(n["node_id"]), int(n["port"]), int(n["controller_port"]))
                for n in raw["nodes"]
            ),
        )


def read_layout(cluster_dir: Path) -> ClusterLayout | None:
    try:
        return ClusterLayout.from_json((cluster_dir / CLUSTER_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise BrokerError(f"unreadable {cluster_dir / CLUSTER_FILE}: {exc}") from exc


@dataclass(frozen=True)
class LocalClusterConfig:
    data_dir: Path
    brokers: int = 3
    # Client port of node 1; node i listens on port + i - 1. None: free ports. Either
    # way a data dir that already has a cluster.json keeps its recorded ports.
    port: int | None = None
    host: str = "127.0.0.1"
    heap: str = "512m"
    # For the whole cluster to become ready, and for one restarted node.
    startup_timeout: float = 120.0
    stop_timeout: float = 30.0
    cache_dir: Path | None = None
    # Server properties on top of cluster_properties(brokers).
    overrides: tuple[tuple[str, str], ...] = ()


class LocalCluster:
    """`brokers` local KRaft nodes; `start()` blocks until every broker is registered.

    Nodes are numbered 1..brokers, which are also their Kafka broker ids.
    """

    def __init__(self, config: LocalClusterConfig) -> None:
        if config.brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        self.config = config
        self._layout: ClusterLayout | None = None
        self._brokers: dict[int, LocalBroker] = {}
        self.startup_seconds: float | None = None

    # -- addresses -------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """Every node's client address, comma-separated (dead nodes included)."""
        return self._started_layout().bootstrap_servers

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(n.node_id for n in self._started_layout().nodes)

    def broker(self, node_id: int) -> LocalBroker:
        try:
            return self._brokers[node_id]
        except KeyError:
            raise BrokerError(f"no broker {node_id} (nodes: {sorted(self._brokers)})") from None

    def is_running(self, node_id: int) -> bool:
        return self.broker(node_id).is_running

    # -- whole cluster ---------------------------------------------------------------

    def start(self, *, detach: bool = False) -> str:
        """Start every node and return the bootstrap list once all brokers registered.

        detach as in `LocalBroker.start`. On failure every node is stopped again.
        """
        if self._brokers:
            raise BrokerError("cluster already started by this object")
        started = time.monotonic()
        root = self.config.data_dir.resolve()
        layout = self._plan(root)
        root.mkdir(parents=True, exist_ok=True)
        (root / CLUSTER_FILE).write_text(layout.to_json(), encoding="utf-8")
        self._layout = layout
        self._brokers = {n.node_id: LocalBroker(self._node_config(root, n)) for n in layout.nodes}
        deadline = started + self.config.startup_timeout
        try:
            # Formatting is a JVM run per node: at once. Launched on this thread, since
            # a broker not detached dies with the thread that started it.
            with ThreadPoolExecutor(len(self._brokers)) as pool:
                for future in [pool.submit(b.prepare) for b in self._brokers.values()]:
                    future.result()
            # A voter answers only once a majority of the quorum runs: launch all first.
            for broker in self._brokers.values():
                broker.launch(detach=detach)
            for broker in self._brokers.values():
                broker.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
            self.wait_brokers(len(self._brokers), timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return layout.bootstrap_servers

    def stop(self) -> None:
        """Stop every node: SIGTERM to all at once, SIGKILL after `stop_timeout`."""
        for broker in self._brokers.values():
            broker.request_stop()
        for broker in self._brokers.values():
            broker.stop()
        self._brokers = {}

    def heal(self, timeout: float | None = None) -> None:
        """Start every node that is not running; wait until all brokers are registered."""
        for node_id, broker in self._brokers.items():
            if not broker.is_running:
                self.start_broker(node_id, timeout=timeout)
        self.wait_brokers(len(self._brokers), timeout or self.config.startup_timeout)

    # -- one node --------------------------------------------------------------------

    def kill_broker(self, node_id: int) -> None:
        """SIGKILL node `node_id` (broker and controller), as a crash would."""
        self.broker(node_id).kill()

    def stop_broker(self, node_id: int) -> None:
        """Stop node `node_id` gracefully (controlled shutdown; SIGKILL after stop_timeout)."""
        self.broker(node_id).stop()

    def start_broker(self, node_id: int, *, timeout: float | None = None) -> None:
        """Start a stopped or killed node again: same id, ports and data dir.

        Returns once it answers metadata requests; it catches up its replicas after
        that (`wait_in_sync`).
        """
        broker = self.broker(node_id)
        if broker.is_running:
            raise BrokerError(f"broker {node_id} is running")
        broker.stop()  # forgets a process that exited by itself
        broker.launch(detach=False)
        broker.wait_ready(timeout=timeout or self.config.startup_timeout)

    # -- waiting on the cluster's view -----------------------------------------------

    def wait_brokers(self, count: int, timeout: float = 30.0) -> None:
        """Wait until the metadata lists `count` live (unfenced) brokers."""
        last = "no answer"
        deadline = time.monotonic() + timeout
        admin = self._admin()
        while True:
            try:
                brokers = admin.list_topics(timeout=2).brokers
                if len(brokers) == count:
                    return
                last = f"brokers {sorted(brokers)}"
            except Exception as exc:  # KafkaException; imported lazily
                last = str(exc)
            if time.monotonic() > deadline:
                raise BrokerError(f"not {count} brokers after {timeout:g}s ({last})")
            time.sleep(0.2)

    def wait_in_sync(self, topics: Collection[str] | None = None, timeout: float = 60.0) -> None:
        """Wait until every partition of `topics` (None: all topics, internal ones
        included) has a leader and all its replicas in the ISR."""
        deadline = time.monotonic() + timeout
        admin = self._admin()
        while True:
            lagging = []
            try:
                metadata = admin.list_topics(timeout=2).topics
                for name in topics if topics is not None else metadata:
                    topic = metadata.get(name)
                    if topic is None or topic.error is not None:
                        lagging.append(f"{name}: no metadata")
                        continue
                    for p in topic.partitions.values():
                        if p.leader < 0 or sorted(p.isrs) != sorted(p.replicas):
                            lagging.append(f"{name}[{p.id}] isr={p.isrs} replicas={p.replicas}")
            except Exception as exc:  # KafkaException; imported lazily
                lagging.append(str(exc))
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"not in sync after {timeout:g}s: {'; '.join(lagging[:10])}")
            time.sleep(0.2)

    def partition_leader(self, topic: str, partition: int = 0) -> int:
        """The node id leading `topic`'s `partition` (-1 while it has no leader)."""
        metadata = self._admin().list_topics(topic, timeout=10).topics[topic]
        leader: int = metadata.partitions[partition].leader
        return leader

    def in_sync_replicas(self, topic: str, partition: int = 0) -> list[int]:
        """The node ids in the ISR of `topic`'s `partition`."""
        metadata = self._admin().list_topics(topic, timeout=10).topics[topic]
        return list(metadata.partitions[partition].isrs)

    # -- internals -------------------------------------------------------------------

    def _started_layout(self) -> ClusterLayout:
        if self._layout is None:
            raise BrokerError("cluster not started")
        return self._layout

    def _admin(self) -> AdminClient:
        # Imported here, as in broker.py: state and stop work without confluent_kafka.
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap_servers}, logger=quiet_logger())

    def _plan(self, root: Path) -> ClusterLayout:
        cfg = self.config
        for node_id in range(1, cfg.brokers + 1):
            state = running_state(node_dir(root, node_id))
            if state is not None:
                raise BrokerError(
                    f"node {node_id} of {root} already runs at {state.bootstrap_servers} "
                    f"(pid {state.pid})"
                )
        layout = read_layout(root)
        if layout is not None:
            first = layout.nodes[0].port
            if len(layout.nodes) != cfg.brokers:
                raise BrokerError(
                    f"{root} holds a {len(layout.nodes)}-broker cluster, not {cfg.brokers}: "
                    "start it with that many or remove the directory"
                )
            if cfg.port is not None and cfg.port != first:
                raise BrokerError(
                    f"{root} holds a cluster on ports from {first}, not {cfg.port}: "
                    "start it on those or remove the directory"
                )
            if layout.host != cfg.host:
                raise BrokerError(f"{root} holds a cluster on {layout.host}, not {cfg.host}")
            return layout
        n = cfg.brokers
        first_port = cfg.port
        wanted = [None if first_port is None else first_port + i for i in range(n)]
        ports = choose_ports(cfg.host, [*wanted, *([None] * n)])
        return ClusterLayout(
            cluster_id=random_cluster_id(),
            host=cfg.host,
            nodes=tuple(NodeLayout(i + 1, ports[i], ports[n + i]) for i in range(n)),
        )

    def _node_config(self, root: Path, node: NodeLayout) -> BrokerConfig:
        cfg, layout = self.config, self._started_layout()
        return BrokerConfig(
            data_dir=node_dir(root, node.node_id),
            port=node.port,
            controller_port=node.controller_port,
            host=layout.host,
            node_id=node.node_id,
            heap=cfg.heap,
            startup_timeout=cfg.startup_timeout,
            stop_timeout=cfg.stop_timeout,
            cache_dir=cfg.cache_dir,
            quorum_voters=layout.quorum_voters,
            cluster_id=layout.cluster_id,
            overrides=(*cluster_properties(cfg.brokers), *cfg.overrides),
        )

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- from any process (the CLI) ------------------------------------------------------


def running_cluster(cluster_dir: Path) -> tuple[ClusterLayout, list[BrokerState]] | None:
    """The layout and live nodes of the cluster in cluster_dir; None when none runs."""
    root = cluster_dir.resolve()
    layout = read_layout(root)
    if layout is None:
        return None
    live = [running_state(node_dir(root, n.node_id)) for n in layout.nodes]
    states = [s for s in live if s is not None]
    return (layout, states) if states else None


def stop_cluster(cluster_dir: Path, timeout: float = 30.0) -> list[BrokerState]:
    """Stop every running node of the cluster in cluster_dir; return the stopped ones."""
    root = cluster_dir.resolve()
    layout = read_layout(root)
    if layout is None:
        return []
    return stop_brokers([node_dir(root, n.node_id) for n in layout.nodes], timeout)


def running_bootstrap(data_dir: Path) -> str | None:
    """Bootstrap address of the local broker or cluster in data_dir, if one runs."""
    state = running_state(data_dir)
    if state is not None:
        return state.bootstrap_servers
    cluster = running_cluster(data_dir)
    return cluster[0].bootstrap_servers if cluster is not None else None
