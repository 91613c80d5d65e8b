"""One broker of three killed -9 under load: the scheduler and the worker follow the
new partition leaders, nothing is lost, no result is duplicated, no step whose result
was seen runs again, and the broker rejoins its ISRs."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.client import Client
from pipeline.localkafka.cluster import LocalCluster
from tests.support.fleet import (
    Fleet,
    PacedSender,
    StepLog,
    assert_once_each,
    read_results,
    wait_for_members,
    wait_for_new_steps,
)
from tests.support.runtime import runtime_settings
from topics.provision import provision


def test_losing_one_broker_of_three_loses_nothing(
    kafka_cluster: LocalCluster, topic_prefix: str, tmp_path: Path
) -> None:
    bootstrap = kafka_cluster.bootstrap
    settings = runtime_settings(bootstrap, topic_prefix, replication_factor=3)
    provision(bootstrap, settings.catalogue)
    crash_log = tmp_path / "steps.log"
    fleet = Fleet(settings, tmp_path, crash_log)
    fleet.start("scheduler", "scheduler", "cluster")
    fleet.start("worker", "worker", "cluster")
    # The broker that leads the first journal partition: killing it moves leaders that
    # both processes write to and read from.
    victim = kafka_cluster.partition_leader(settings.topic_names.journal, 0)
    try:
        wait_for_members(settings, "scheduler", 1)
        wait_for_members(settings, "workers", 1)
        client = Client(settings)
        requests = [client.request("Crash/work", i) for i in range(2_400)]
        sender = PacedSender(client, requests, rate=150)
        sender.start()
        time.sleep(4)
        wait_for_new_steps(crash_log, timeout_s=10)
        kafka_cluster.kill_broker(victim)
        time.sleep(6)
        kafka_cluster.start_broker(victim)
        sender.join(90)
        client.close()
        results = read_results(settings, {r.id for r in requests}, timeout_s=180)
        kafka_cluster.wait_in_sync([settings.topic_names.journal, settings.topic_names.results])
        assert fleet.alive("scheduler") and fleet.alive("worker")
    finally:
        fleet.stop_all()
        kafka_cluster.heal()

    assert_once_each(results, {r.id for r in requests})
    StepLog.read(crash_log).assert_no_seen_step_ran_again()
