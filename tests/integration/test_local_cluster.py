"""The local 3-broker cluster: replicated topics, and clients riding out a broker's death.

A broker killed with SIGKILL leaves the ISR when the controller fences it (6 s
without heartbeats); acks=all producers and read_committed consumers carry on against
the two left, and the restarted broker catches up into the ISR again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

# NewTopic's documented home; its stubs re-export it implicitly, which --strict rejects.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
)

from pipeline.localkafka.cluster import LocalCluster
from topics import TopicCatalogue, TopicNames
from topics.provision import provision

pytestmark = pytest.mark.integration


def _wait(done: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Wait until done(); return how long it took."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, 1, 3, config={"min.insync.replicas": "2"})
    for future in admin.create_topics([new]).values():
        future.result(timeout=30)


class Reader:
    """A read_committed consumer (in a consumer group) polled on its own thread.

    A rebalance may hand it records again; `log` keeps each offset once.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.log: dict[int, bytes] = {}
        self.errors: list[str] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "session.timeout.ms": 10_000,
            }
        )
        self._consumer.subscribe([topic])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(500, timeout=0.1):
                error = message.error()
                if error is None:
                    self.log[message.offset() or 0] = message.value() or b""
                elif not error.retriable() and error.code() != KafkaError._PARTITION_EOF:
                    self.errors.append(str(error))
        self._consumer.close()

    def values(self) -> list[bytes]:
        log = dict(self.log)
        return [log[offset] for offset in sorted(log)]

    def count(self) -> int:
        return len(self.log)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)


class Writer:
    """An idempotent acks=all producer sending 0, 1, 2, ... every few ms on a thread."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.acked: list[int] = []
        self.failed: list[str] = []
        self._topic = topic
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 60_000,
            }
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.acked.append(int(message.value() or b""))
        else:
            self.failed.append(str(error))

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self._producer.produce(
                self._topic, value=str(i).encode(), on_delivery=self._on_delivery
            )
            i += 1
            self._producer.poll(0.005)
        self._producer.flush(60)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(90)


@contextmanager
def _healed(cluster: LocalCluster) -> Iterator[None]:
    """Whatever the test did, the next one gets all brokers back."""
    try:
        yield
    finally:
        cluster.heal()


def test_cluster_provisions_replicated_topics(kafka_cluster: LocalCluster) -> None:
    bootstrap = kafka_cluster.bootstrap
    assert len(bootstrap.split(",")) == 3
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]

    broker = ConfigResource(ConfigResource.Type.BROKER, "1")
    configs = admin.describe_configs([broker])[broker].result(timeout=10)
    assert {
        name: configs[name].value
        for name in (
            "default.replication.factor",
            "min.insync.replicas",
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
            "transaction.state.log.min.isr",
        )
    } == {
        "default.replication.factor": "3",
        "min.insync.replicas": "2",
        "offsets.topic.replication.factor": "3",
        "transaction.state.log.replication.factor": "3",
        "transaction.state.log.min.isr": "2",
    }

    names = TopicNames(f"c{uuid.uuid4().hex[:8]}.")
    catalogue = TopicCatalogue(
        names, runtime_partitions=2, results_partitions=1, replication_factor=3
    )
    created = provision(bootstrap, catalogue)
    assert sorted(created) == sorted(s.name for s in catalogue.specs())
    metadata = admin.list_topics(timeout=10).topics
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in created]
    described = admin.describe_configs(resources)
    for name, resource in zip(created, resources, strict=True):
        assert all(len(p.replicas) == 3 for p in metadata[name].partitions.values()), name
        assert described[resource].result(timeout=10)["min.insync.replicas"].value == "2", name
    # Provisioning again finds them all as the catalogue says.
    assert provision(bootstrap, catalogue) == []

    # A graceful stop: the broker leaves at once (controlled shutdown), and comes back.
    with _healed(kafka_cluster):
        began = time.monotonic()
        kafka_cluster.stop_broker(3)
        stopped = time.monotonic()
        assert not kafka_cluster.is_running(3)
        kafka_cluster.wait_brokers(2, timeout=10)
        kafka_cluster.start_broker(3)
        started = time.monotonic()
        kafka_cluster.wait_brokers(3, timeout=30)
        kafka_cluster.wait_in_sync(created, timeout=30)
        print(
            f"graceful stop {stopped - began:.1f}s, restart {started - stopped:.1f}s, "
            f"in sync {time.monotonic() - started:.1f}s later"
        )


def test_clients_ride_out_a_killed_broker(kafka_cluster: LocalCluster) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.kill"
    bootstrap = kafka_cluster.bootstrap
    _create_topic(bootstrap, topic)
    kafka_cluster.wait_in_sync([topic], timeout=30)
    reader = Reader(bootstrap, topic)
    writer = Writer(bootstrap, topic)
    with _healed(kafka_cluster):
        try:
            # The group's coordinator exists and the reader reads before anything dies.
            _wait(lambda: reader.count() >= 100, 30, "the reader's first records")
            victim = kafka_cluster.partition_leader(topic)
            kafka_cluster.kill_broker(victim)
            at_kill = len(writer.acked)

            stalled = _wait(lambda: len(writer.acked) > at_kill + 50, 30, "acks, a broker dead")
            _wait(lambda: len(writer.acked) >= at_kill + 200, 30, "acks with a broker dead")
            assert kafka_cluster.partition_leader(topic) not in (victim, -1)
            assert victim not in kafka_cluster.in_sync_replicas(topic)
            _wait(lambda: reader.count() >= at_kill + 200, 30, "reads with a broker dead")

            restart = time.monotonic()
            kafka_cluster.start_broker(victim)
            started = time.monotonic() - restart
            kafka_cluster.wait_in_sync([topic], timeout=30)
            print(
                f"acks resumed {stalled:.1f}s after the kill; broker {victim} restarted in "
                f"{started:.1f}s, back in the ISR {time.monotonic() - restart - started:.1f}s later"
            )
            after = len(writer.acked)
            _wait(lambda: len(writer.acked) >= after + 200, 30, "acks after the rejoin")
        finally:
            writer.close()
        acked = list(writer.acked)
        _wait(lambda: reader.count() >= len(acked), 30, "every acked record read")
        reader.close()

    assert writer.failed == []
    assert reader.errors == []
    # Idempotent, one partition: every record acknowledged, once in the log, in order.
    assert acked == list(range(len(acked)))
    assert [int(v) for v in reader.values()] == acked


def _commit_batch(producer: Producer, topic: str, values: list[bytes]) -> None:
    """One transaction of `values`, retried as an application would until it commits."""
    while True:
        producer.begin_transaction()
        for value in values:
            producer.produce(topic, value=value)
        while True:
            try:
                producer.commit_transaction(30)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.retriable():
                    continue  # commit again: it is idempotent
                if error.txn_requires_abort():
                    producer.abort_transaction(30)
                    break  # send the batch again in a new transaction
                raise


def test_transactions_ride_out_a_killed_coordinator(kafka_cluster: LocalCluster) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.tx"
    bootstrap = kafka_cluster.bootstrap
    _create_topic(bootstrap, topic)

    def transactional(name: str, **extra: str | int) -> Producer:
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": f"{topic}-{name}",
                "transaction.timeout.ms": 10_000,
                **extra,
            }
        )
        producer.init_transactions(30)
        return producer

    # A producer that opens a transaction and never ends it, as a dead one would: the
    # coordinator aborts it after its timeout (within the 1 s cleanup interval).
    abandoned = transactional("abandoned", **{"transaction.timeout.ms": 2_000})
    abandoned.begin_transaction()
    abandoned.produce(topic, value=b"abandoned")
    abandoned.flush(30)
    opened = time.monotonic()

    committer = transactional("committer")
    reader = Reader(bootstrap, topic)
    batches = [[f"{b}.{i}".encode() for i in range(5)] for b in range(30)]
    with _healed(kafka_cluster):
        try:
            for batch in batches[:10]:
                _commit_batch(committer, topic, batch)
            _wait(lambda: reader.count() >= 50, 30, "commits behind the abandoned one")
            unblocked = time.monotonic() - opened
            print(f"read_committed unblocked {unblocked:.1f}s after the abandoned transaction")
            assert unblocked < 10

            kafka_cluster.wait_in_sync(["__transaction_state"], timeout=30)
            victim = kafka_cluster.partition_leader("__transaction_state")
            kafka_cluster.kill_broker(victim)
            killed = time.monotonic()
            for batch in batches[10:20]:
                _commit_batch(committer, topic, batch)
            print(f"10 transactions committed {time.monotonic() - killed:.1f}s after the kill")

            kafka_cluster.start_broker(victim)
            for batch in batches[20:]:
                _commit_batch(committer, topic, batch)
            kafka_cluster.wait_in_sync(["__transaction_state", topic], timeout=30)
            _wait(lambda: reader.count() >= 150, 30, "every committed record read")
        finally:
            reader.close()

    assert reader.errors == []
    # Offsets count the abort and commit markers too: compare the values only.
    assert reader.values() == [value for batch in batches for value in batch]
