"""The materialized views on a real broker: committed records only, tombstones delete."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

# NewTopic's documented home; its stubs re-export it implicitly, which --strict rejects.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from pipeline.codec.records import WireCodec
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.model import (
    EntryKind,
    Failure,
    HandlerDefinition,
    InvocationRequest,
    JournalEntry,
    OnExhausted,
    QueueId,
    RetryPolicy,
    ServiceDefinition,
    Target,
)
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.errors import NotFoundError
from pipeline.kafka.config import ClusterConfig
from pipeline.views.catalog import ServiceCatalogView
from pipeline.views.invocation_index import InvocationQuery
from pipeline.views.scheduler_state import SchedulerStateView
from topics import TopicNames
from topics.catalogue import COMPACTED

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0

Record = tuple[str, str, bytes | None]


@pytest.fixture
def names(kafka_bootstrap: str, topic_prefix: str) -> TopicNames:
    names = TopicNames(topic_prefix)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = [
        NewTopic(names.scheduler_state, num_partitions=3, replication_factor=1, config=COMPACTED),
        NewTopic(names.services, num_partitions=1, replication_factor=1, config=COMPACTED),
    ]
    for future in admin.create_topics(topics).values():
        future.result(timeout=TIMEOUT_S)
    return names


@pytest.fixture
def producer(kafka_bootstrap: str, topic_prefix: str) -> Iterator[Producer]:
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{topic_prefix}writer"}
    )
    producer.init_transactions(TIMEOUT_S)
    yield producer
    producer.flush(TIMEOUT_S)


@pytest.fixture
def codec() -> WireCodec:
    return WireCodec()


def write(producer: Producer, records: list[Record], *, commit: bool = True) -> None:
    producer.begin_transaction()
    for topic, key, value in records:
        producer.produce(topic, key=key.encode(), value=value)
    producer.flush(TIMEOUT_S)
    if commit:
        producer.commit_transaction(TIMEOUT_S)
    else:
        producer.abort_transaction(TIMEOUT_S)


def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {TIMEOUT_S}s")
        time.sleep(0.05)


def invocation(invocation_id: str, status: InvocationStatus, **changes: object) -> Invocation:
    request = InvocationRequest(
        id=invocation_id,
        target=Target("Billing", "charge"),
        input=b'{"amount": 5}',
        created_at_ms=1_700_000_000_000,
        scope="tenant-a",
        limit_key="user-9",
    )
    return Invocation(request=request, status=status).evolve(**changes)


BILLING = ServiceDefinition(
    name="Billing",
    handlers=(
        HandlerDefinition("charge", RetryPolicy(max_attempts=3, on_exhausted=OnExhausted.PAUSE)),
    ),
)


def test_views_show_committed_state_and_drop_tombstones(
    kafka_bootstrap: str, names: TopicNames, producer: Producer, codec: WireCodec
) -> None:
    state_topic, services_topic = names.scheduler_state, names.services
    running = invocation(
        "inv-running",
        InvocationStatus.RUNNING,
        attempt=2,
        first_started_at_ms=1_700_000_000_100,
        journal=(JournalEntry(0, EntryKind.RUN, "reserve", value=b"ok"),),
        last_failure=Failure("timeout", "TimeoutError"),
    )
    pending = invocation("inv-pending", InvocationStatus.PENDING)
    queue = VirtualQueue(QueueId("tenant-a", "user-9"), queued=1, running=1, next_seq=2)
    write(
        producer,
        [
            (state_topic, "i/inv-running", codec.encode_invocation_state(running)),
            # A record that does not decode is skipped; the records after it still count.
            (state_topic, "i/inv-garbled", b"\x00not avro"),
            (state_topic, "i/inv-pending", codec.encode_invocation_state(pending)),
            (state_topic, "q/tenant-a/user-9", codec.encode_queue_state(queue)),
            (services_topic, "Billing", codec.encode_service(BILLING)),
        ],
    )
    ghost = invocation("inv-ghost", InvocationStatus.PENDING)
    write(
        producer,
        [
            (state_topic, "i/inv-ghost", codec.encode_invocation_state(ghost)),
            (services_topic, "Ghost", codec.encode_service(ServiceDefinition("Ghost", ()))),
        ],
        commit=False,
    )

    state = SchedulerStateView(ClusterConfig(kafka_bootstrap), names, codec)
    catalog = ServiceCatalogView(ClusterConfig(kafka_bootstrap), names, codec)
    state.start()
    catalog.start()
    try:
        assert state.wait_caught_up(TIMEOUT_S)
        assert catalog.wait_caught_up(TIMEOUT_S)

        assert state.invocation("inv-running") == running
        assert state.invocation("inv-pending") == pending
        assert state.invocation("inv-garbled") is None
        assert state.invocation("inv-ghost") is None, "an aborted record became state"
        assert state.queues() == [queue]
        assert catalog.services() == [BILLING]
        assert catalog.service("Billing") == BILLING
        assert catalog.service("Ghost") is None, "an aborted record became state"

        write(
            producer,
            [
                (state_topic, "i/inv-running", None),
                (state_topic, "q/tenant-a/user-9", None),
                (services_topic, "Billing", None),
            ],
        )

        eventually(lambda: state.invocation("inv-running") is None)
        eventually(lambda: state.queues() == [] and catalog.services() == [])
        assert state.invocation("inv-pending") == pending
    finally:
        state.stop()
        catalog.stop()


def test_an_empty_topic_is_caught_up_at_once(
    kafka_bootstrap: str, names: TopicNames, codec: WireCodec
) -> None:
    view = ServiceCatalogView(ClusterConfig(kafka_bootstrap), names, codec)
    view.start()
    try:
        assert view.wait_caught_up(TIMEOUT_S)
        assert view.services() == []
    finally:
        view.stop()


def test_an_open_transaction_does_not_hold_catching_up_back(
    kafka_bootstrap: str, names: TopicNames, producer: Producer, codec: WireCodec
) -> None:
    write(producer, [(names.services, "Billing", codec.encode_service(BILLING))])
    producer.begin_transaction()
    producer.produce(names.services, key=b"Later", value=codec.encode_service(BILLING))
    producer.flush(TIMEOUT_S)

    view = ServiceCatalogView(ClusterConfig(kafka_bootstrap), names, codec)
    view.start()
    try:
        assert view.wait_caught_up(TIMEOUT_S)
        assert [service.name for service in view.services()] == ["Billing"]

        producer.commit_transaction(TIMEOUT_S)
        eventually(lambda: view.service("Later") is not None)
    finally:
        view.stop()


def test_a_missing_topic_is_named_in_the_error(
    kafka_bootstrap: str, topic_prefix: str, codec: WireCodec
) -> None:
    names = TopicNames(f"{topic_prefix}absent.")
    view = SchedulerStateView(ClusterConfig(kafka_bootstrap), names, codec)

    with pytest.raises(NotFoundError, match=names.scheduler_state):
        view.start()


def test_a_kept_replica_resumes_where_it_stopped_and_sees_what_came_meanwhile(
    kafka_bootstrap: str,
    names: TopicNames,
    producer: Producer,
    codec: WireCodec,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = invocation("inv-first", InvocationStatus.PENDING)
    write(producer, [(names.scheduler_state, "i/inv-first", codec.encode_invocation_state(first))])
    cluster = ClusterConfig(kafka_bootstrap)

    view = SchedulerStateView(cluster, names, codec, tmp_path, instance_id="pod-0")
    view.start()
    assert view.wait_caught_up(TIMEOUT_S)
    view.stop()

    done = invocation("inv-first", InvocationStatus.COMPLETED)
    later = invocation("inv-later", InvocationStatus.PENDING)
    write(
        producer,
        [
            (names.scheduler_state, "i/inv-first", codec.encode_invocation_state(done)),
            (names.scheduler_state, "i/inv-later", codec.encode_invocation_state(later)),
        ],
    )
    caplog.set_level(logging.INFO, logger="pipeline.views.scheduler_state")
    again = SchedulerStateView(cluster, names, codec, tmp_path, instance_id="pod-0")
    again.start()
    try:
        assert again.wait_caught_up(TIMEOUT_S)
        assert "resumes from" in caplog.text
        assert again.invocation("inv-first") == done
        assert again.invocation("inv-later") == later
        pending = again.list_invocations(InvocationQuery(status=InvocationStatus.PENDING))
        assert [i.id for i in pending.invocations] == ["inv-later"]
    finally:
        again.stop()


def test_a_kept_replica_of_a_recreated_topic_reads_it_again(
    kafka_bootstrap: str, topic_prefix: str, codec: WireCodec, tmp_path: Path
) -> None:
    cluster = ClusterConfig(kafka_bootstrap)
    names = TopicNames(f"{topic_prefix}again.")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def create() -> None:
        topic = NewTopic(names.scheduler_state, num_partitions=1, replication_factor=1)
        for future in admin.create_topics([topic]).values():
            future.result(timeout=TIMEOUT_S)

    create()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for n in range(5):
        state = invocation(f"old-{n}", InvocationStatus.COMPLETED)
        producer.produce(
            names.scheduler_state, key=f"i/old-{n}", value=codec.encode_invocation_state(state)
        )
    producer.flush(TIMEOUT_S)
    view = SchedulerStateView(cluster, names, codec, tmp_path, instance_id="pod-0")
    view.start()
    assert view.wait_caught_up(TIMEOUT_S)
    view.stop()

    for future in admin.delete_topics([names.scheduler_state]).values():
        future.result(timeout=TIMEOUT_S)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            create()
            break
        except Exception:
            assert time.monotonic() < deadline, "the topic could not be created again"
            time.sleep(0.5)
    fresh = invocation("new", InvocationStatus.PENDING)
    producer.produce(names.scheduler_state, key="i/new", value=codec.encode_invocation_state(fresh))
    producer.flush(TIMEOUT_S)

    again = SchedulerStateView(cluster, names, codec, tmp_path, instance_id="pod-0")
    again.start()
    try:
        assert again.wait_caught_up(TIMEOUT_S)
        assert again.invocation("new") == fresh
        assert again.invocation("old-0") is None, "rows of the deleted topic survived"
    finally:
        again.stop()
