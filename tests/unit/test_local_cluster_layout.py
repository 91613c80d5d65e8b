"""The local cluster's plan (ports, quorum, properties) and the catalogue's ISR rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.localkafka.broker import BrokerError
from pipeline.localkafka.cluster import (
    CLUSTER_FILE,
    ClusterLayout,
    LocalCluster,
    LocalClusterConfig,
    NodeLayout,
    cluster_properties,
)
from topics import TopicCatalogue, TopicNames
from topics.catalogue import min_insync_replicas


def test_layout_round_trips_and_names_every_voter() -> None:
    layout = ClusterLayout(
        "abc", "127.0.0.1", (NodeLayout(1, 9092, 9192), NodeLayout(2, 9093, 9193))
    )
    assert ClusterLayout.from_json(layout.to_json()) == layout
    assert layout.bootstrap_servers == "127.0.0.1:9092,127.0.0.1:9093"
    assert layout.quorum_voters == "1@127.0.0.1:9192,2@127.0.0.1:9193"


def test_a_new_plan_has_distinct_ports_and_a_kept_one_is_reused(tmp_path: Path) -> None:
    cluster = LocalCluster(LocalClusterConfig(data_dir=tmp_path, brokers=3))
    plan = cluster._plan(tmp_path)
    ports = [p for n in plan.nodes for p in (n.port, n.controller_port)]
    assert len(set(ports)) == 6
    assert [n.node_id for n in plan.nodes] == [1, 2, 3]

    (tmp_path / CLUSTER_FILE).write_text(plan.to_json(), encoding="utf-8")
    assert cluster._plan(tmp_path) == plan
    with pytest.raises(BrokerError, match="3-broker cluster"):
        LocalCluster(LocalClusterConfig(data_dir=tmp_path, brokers=5))._plan(tmp_path)


def test_cluster_properties_replicate_three_ways() -> None:
    props = dict(cluster_properties(3))
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["transaction.abort.timed.out.transaction.cleanup.interval.ms"] == "1000"


@pytest.mark.parametrize(("rf", "isr"), [(1, 1), (2, 2), (3, 2), (5, 2)])
def test_catalogue_topics_get_min_insync_replicas(rf: int, isr: int) -> None:
    assert min_insync_replicas(rf) == isr
    specs = TopicCatalogue(TopicNames(), replication_factor=rf).specs()
    assert {s.configs["min.insync.replicas"] for s in specs} == {str(isr)}
