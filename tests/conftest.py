"""Shared fixtures: one real Kafka broker per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

from pipeline.localkafka.broker import BrokerConfig, LocalBroker
from pipeline.localkafka.cluster import LocalCluster, LocalClusterConfig
from tests.support.secured_broker import SecuredBroker, secured_broker

# Per-example deadlines measure the machine, not the code: on 2 busy cores (a broker,
# processors and tests at once) a slow example says nothing about correctness.
settings.register_profile("pipeline", deadline=None)
settings.load_profile("pipeline")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker: $KAFKA_BOOTSTRAP_SERVERS or a local one.

    A broker that fails to start raises here, which errors every test using it:
    integration tests must never be silently skipped for lack of Kafka.
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = LocalBroker(BrokerConfig(data_dir=tmp_path_factory.mktemp("kafka")))
    bootstrap = broker.start()
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local 3-broker KRaft cluster (replication factor 3, min.insync.replicas 2),
    started by the first test that asks for it and stopped at the end of the session.

    Always local, whatever $KAFKA_BOOTSTRAP_SERVERS says: tests kill and restart its
    brokers (`kill_broker`, `stop_broker`, `start_broker`; node ids 1..3). A test that
    takes a broker down calls `heal()` when done, so the next test gets all three.
    A cluster that fails to start raises here: the tests using it error, never skip.
    """
    cluster = LocalCluster(LocalClusterConfig(data_dir=tmp_path_factory.mktemp("kafka-cluster")))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session", autouse=True)
def scheduler_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Schedulers of this session, in-process or not, keep RocksDB state in a tmp dir."""
    previous = os.environ.get("PIPELINE_STATE_DIR")
    os.environ["PIPELINE_STATE_DIR"] = str(tmp_path_factory.mktemp("scheduler-state"))
    yield
    if previous is None:
        del os.environ["PIPELINE_STATE_DIR"]
    else:
        os.environ["PIPELINE_STATE_DIR"] = previous


@pytest.fixture
def topic_prefix() -> str:
    """A per-test topic name prefix, so tests sharing the broker never collide."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture(scope="session")
def kafka_secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    """A local broker whose clients must log in (SASL PLAIN or SCRAM-SHA-512); like
    `kafka_bootstrap`, it fails rather than skips when it cannot start."""
    with secured_broker(tmp_path_factory.mktemp("kafka-secured")) as broker:
        yield broker
