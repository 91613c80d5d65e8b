"""A rolling restart of every process under load: two schedulers and two workers are
stopped (SIGTERM) and started again one at a time, as an upgrade would; nothing is
lost, no result is duplicated, and no step whose result was seen runs again."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.client import Client
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

PROCESSES = {"scheduler-a": "scheduler", "scheduler-b": "scheduler", "w1": "worker", "w2": "worker"}


def test_a_rolling_restart_under_load_loses_and_repeats_nothing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    provision(kafka_bootstrap, settings.catalogue)
    crash_log = tmp_path / "steps.log"
    fleet = Fleet(settings, tmp_path, crash_log, env={"PIPELINE_SESSION_TIMEOUT_MS": "3000"})
    for name, role in PROCESSES.items():
        fleet.start(name, role, name)
    try:
        wait_for_members(settings, "scheduler", 2)
        wait_for_members(settings, "workers", 2)
        client = Client(settings)
        requests = [client.request("Crash/work", i) for i in range(4_000)]
        sender = PacedSender(client, requests, rate=200)
        sender.start()
        for name, role in PROCESSES.items():
            wait_for_new_steps(crash_log, timeout_s=10)
            assert fleet.terminate(name) == 0, f"{name} did not stop cleanly"
            fleet.start(name, role, name)
            time.sleep(3)
        sender.join(60)
        client.close()
        results = read_results(settings, {r.id for r in requests}, timeout_s=180)
    finally:
        fleet.stop_all()

    assert_once_each(results, {r.id for r in requests})
    StepLog.read(crash_log).assert_no_seen_step_ran_again()
