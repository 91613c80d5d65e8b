"""The scheduler's local RocksDB state: checkpointed with every batch, rebuilt if lost."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline import Context, Service
from pipeline.client import Client
from pipeline.codec.records import WireCodec
from pipeline.core.limits import LimitRule, RulePattern
from pipeline.runtime.scheduler.partition_state import PartitionState
from pipeline.runtime.state_store import StateStore
from pipeline.settings import Settings
from tests.integration.test_flow_control import write_rules
from tests.support.runtime import register, running_scheduler, running_worker, runtime_settings
from topics.provision import provision

pytestmark = pytest.mark.integration

ran: list[str] = []
ran_lock = threading.Lock()
service = Service("Stateful")


@service.handler()
async def work(ctx: Context, n: int) -> int:
    with ran_lock:
        ran.append(ctx.invocation_id)
    return n


def changelog_ends(settings: Settings) -> list[int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "x"})
    try:
        topic = settings.topic_names.scheduler_state
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
            for p in range(settings.runtime_partitions)
        ]
    finally:
        consumer.close()


def test_checkpoints_cover_every_batch_and_lost_state_is_rebuilt(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    ran.clear()
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    assert settings.state_dir is not None
    provision(kafka_bootstrap, settings.catalogue)
    register(settings, [service])
    write_rules(settings, 0, LimitRule("hold", RulePattern.parse("acme"), paused=True))
    with running_worker(settings, [service]), Client(settings) as client:
        with running_scheduler(settings):
            ids = [
                client.send("Stateful/work", n, scope="acme", limit_key=f"k{n}") for n in range(40)
            ]
            probe = client.call("Stateful/work", -1)  # unpaused: proves the batch is through
            assert probe == -1
            time.sleep(1)

        store = StateStore(
            settings.state_dir, settings.topic_names.group("scheduler"), topic_prefix
        )
        try:
            for partition, end in enumerate(changelog_ends(settings)):
                checkpoint = PartitionState(store, partition, WireCodec()).checkpoint()
                assert checkpoint is not None
                # The newest record, or the transaction marker after it.
                assert end - checkpoint.offset <= 1, (partition, end, checkpoint)
        finally:
            store.close()

        shutil.rmtree(store.path)
        with running_scheduler(settings):
            write_rules(settings, 1, LimitRule("hold", RulePattern.parse("acme")))
            results = [client.result(i, timeout_s=60) for i in ids]

    assert all(r.attempts == 1 for r in results)
    assert sorted(i for i in ran if i in set(ids)) == sorted(ids), "lost or ran twice"


def test_a_dispatch_carries_the_time_its_lease_is_counted_from(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """The worker counts an attempt's lease from the dispatch record's time; were that
    later than the scheduler's decision, the worker would think it holds the lease
    after the scheduler fenced it, and a step could run on beside the next attempt."""
    settings = runtime_settings(kafka_bootstrap, topic_prefix, lease_timeout_ms=60_000)
    assert settings.state_dir is not None
    provision(kafka_bootstrap, settings.catalogue)
    register(settings, [service])
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{topic_prefix}probe",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([settings.topic_names.dispatch])
    dispatched: dict[str, int] = {}
    with running_scheduler(settings), Client(settings) as client:  # no worker: they wait
        ids = {client.send("Stateful/work", n) for n in range(20)}
        deadline = time.monotonic() + 60
        while set(dispatched) != ids and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            order = WireCodec().decode_dispatch(message.value())
            dispatched[order.request.id] = message.timestamp()[1]
        consumer.close()
    assert set(dispatched) == ids
    store = StateStore(settings.state_dir, settings.topic_names.group("scheduler"), topic_prefix)
    try:
        for invocation_id, sent_at in dispatched.items():
            found = [
                PartitionState(store, p, WireCodec()).invocation(invocation_id)
                for p in range(settings.runtime_partitions)
            ]
            (invocation,) = [i for i in found if i is not None]
            assert invocation.wake_at_ms == sent_at + settings.lease_timeout_ms, invocation_id
    finally:
        store.close()
