"""Worker-pool (deployment) caps end to end, measured from what the handlers ran.

Two scheduler processes share the partitions, so capacity crosses processes through
Kafka (demand to the deployment's home partition, grants back) as well as within one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import Context, Service
from pipeline.client import Client
from pipeline.codec.records import WireCodec
from pipeline.core.admission import Blocker
from pipeline.core.deployment import DeploymentLimit
from pipeline.core.introspection import queue_report
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.limits import delete_deployment_limit, put_deployment_limit
from pipeline.kafka.config import ClusterConfig
from pipeline.runtime.limit_rules import LimitRuleReader, LimitRuleWriter
from pipeline.settings import Settings
from pipeline.views.invocation_index import InvocationQuery
from pipeline.views.scheduler_state import SchedulerStateView
from tests.integration.test_flow_control import max_overlap
from tests.support.runtime import (
    register,
    running_scheduler,
    running_worker,
    runtime_settings,
    scheduler_process,
)
from topics.provision import provision

pytestmark = pytest.mark.integration

runs: list[tuple[float, float]] = []
runs_lock = threading.Lock()
pool = Service("Pool")


@pool.handler()
async def hold(ctx: Context, seconds: float) -> None:
    started = time.monotonic()
    await asyncio.sleep(seconds)
    with runs_lock:
        runs.append((started, time.monotonic()))


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Iterator[Settings]:
    runs.clear()
    base = runtime_settings(kafka_bootstrap, topic_prefix, worker_slots=256)
    provision(kafka_bootstrap, base.catalogue)
    register(base, [pool])
    first = runtime_settings(kafka_bootstrap, topic_prefix, instance_id=f"{topic_prefix}-a")
    second = runtime_settings(kafka_bootstrap, topic_prefix, instance_id=f"{topic_prefix}-b")
    with (
        running_worker(base, [pool]),
        running_scheduler(first) as one,
        running_scheduler(second) as other,
    ):
        deadline = time.monotonic() + 60
        while not (one.partitions and other.partitions):
            assert time.monotonic() < deadline, "the two schedulers did not share the partitions"
            time.sleep(0.1)
        yield base


def change_limits(settings: Settings, change: object) -> None:
    codec = WireCodec()
    reader = LimitRuleReader(settings.cluster, settings.topic_names.limits, codec)
    writer = LimitRuleWriter(settings.cluster, settings.topic_names.limits, codec)
    try:
        reader.catch_up(30)
        writer.write(change(reader.ruleset()))  # type: ignore[operator]
    finally:
        reader.close()
        writer.close()


def cap(settings: Settings, concurrency: int) -> None:
    limit = DeploymentLimit("Pool", concurrency)
    change_limits(settings, lambda rules: put_deployment_limit(rules, limit, None))


def wait_for_runs(count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(runs) < count:
        assert time.monotonic() < deadline, f"{len(runs)} of {count} ran in {timeout_s} s"
        time.sleep(0.05)


def send(client: Client, count: int, seconds: float) -> list[str]:
    # Many scopes and keys, so that the work arrives on every partition.
    requests = [
        client.request("Pool/hold", seconds, scope=f"tenant-{i % 7}", limit_key=f"user-{i % 13}")
        for i in range(count)
    ]
    client.send_requests(requests)
    return [request.id for request in requests]


def test_the_cap_holds_across_partitions_and_processes_and_can_be_raised(
    settings: Settings,
) -> None:
    cap(settings, 3)
    time.sleep(1)  # the schedulers poll the limits between batches
    with Client(settings) as client:
        send(client, 150, 0.1)
        wait_for_runs(30, timeout_s=60)
        capped = list(runs)
        cap(settings, 8)
        raised_at = time.monotonic()
        wait_for_runs(150, timeout_s=60)
    peak = max_overlap(capped)
    assert peak <= 3, f"{peak} ran at once under a cap of 3"
    assert peak == 3, "the cap should be reached, or the test proves nothing"
    after = [(s, e) for s, e in runs if s > raised_at + 0.5]
    assert after, "nothing started after the cap was raised"
    assert 3 < max_overlap(after) <= 8


def test_lifting_the_cap_starts_what_awaits_it_and_no_unit_is_lost(
    settings: Settings,
) -> None:
    cap(settings, 0)  # hold everything: the pool is drained
    time.sleep(1)
    view = SchedulerStateView(settings.cluster, settings.topic_names, WireCodec())
    view.start()
    try:
        with Client(settings) as client:
            send(client, 20, 0.05)
            deadline = time.monotonic() + 30
            while True:
                awaiting = view.list_invocations(
                    InvocationQuery(status=InvocationStatus.AWAITING_CAPACITY)
                ).invocations
                load = view.deployment_load("Pool")
                # The view reads each changelog partition on its own: the home's count
                # may trail the invocations' rows on other partitions for a moment.
                if len(awaiting) == 20 and load is not None and load.waiting == 20:
                    break
                assert time.monotonic() < deadline, f"{len(awaiting)} of 20 await; home: {load}"
                time.sleep(0.1)
            assert runs == []
            queue = next(q for q in view.queues() if q.awaiting_capacity)
            report = queue_report(queue, (), int(time.time() * 1000))
            assert report.head_blocker is Blocker.DEPLOYMENT_CAPACITY
            assert load.running == 0

            change_limits(settings, lambda rules: delete_deployment_limit(rules, "Pool", None))
            wait_for_runs(20, timeout_s=30)
        # Every unit granted came back: the home's count is empty again.
        deadline = time.monotonic() + 10
        while view.deployment_load("Pool") is not None:
            assert time.monotonic() < deadline, f"left behind: {view.deployment_load('Pool')}"
            time.sleep(0.1)
    finally:
        view.stop()
    assert len(runs) == 20


def test_scheduler_kill_9_keeps_the_cap_and_loses_no_unit(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    runs.clear()
    settings = runtime_settings(kafka_bootstrap, topic_prefix, worker_slots=256)
    provision(kafka_bootstrap, settings.catalogue)
    register(settings, [pool])
    cap(settings, 5)
    view = SchedulerStateView(ClusterConfig(kafka_bootstrap), settings.topic_names, WireCodec())
    try:
        with (
            scheduler_process(settings, "deployment-crash", tmp_path / "s.log") as scheduler,
            running_worker(settings, [pool]),
            Client(settings) as client,
        ):
            send(client, 150, 0.1)
            for delay in (1.0, 1.0):
                time.sleep(delay)
                scheduler.kill_and_restart()
            wait_for_runs(150, timeout_s=120)
            view.start()
            deadline = time.monotonic() + 30
            while not view.wait_caught_up(1) or view.deployment_load("Pool") is not None:
                assert time.monotonic() < deadline, f"units left: {view.deployment_load('Pool')}"
                time.sleep(0.2)
    finally:
        view.stop()
    assert len(runs) == 150, "an invocation ran twice"
    peak = max_overlap(runs)
    assert peak <= 5, f"{peak} ran at once under a cap of 5"
