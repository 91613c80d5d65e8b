"""Workers join, leave and lose their session while invocations flow: the dispatch
partitions move between them, and no step whose result a handler saw runs again."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from pipeline.client import Client
from tests.support.fleet import (
    Fleet,
    PacedSender,
    StepLog,
    assert_once_each,
    read_results,
    wait_for_new_steps,
)
from tests.support.runtime import runtime_settings
from topics.provision import provision

RATE = 200  # invocations per second
INVOCATIONS = 6_000
SESSION_TIMEOUT_S = 10  # Settings.membership


def test_rebalances_under_load_run_no_seen_step_again(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = runtime_settings(kafka_bootstrap, topic_prefix, lease_timeout_ms=5_000)
    provision(kafka_bootstrap, settings.catalogue)
    crash_log = tmp_path / "steps.log"
    fleet = Fleet(settings, tmp_path, crash_log)
    fleet.start("scheduler", "scheduler", "rebalance")
    # Dynamic members: a join or a leave rebalances the group at once.
    fleet.start("w1", "worker")
    try:
        client = Client(settings)
        requests = [client.request("Crash/work", i) for i in range(INVOCATIONS)]
        sender = PacedSender(client, requests, RATE)
        sender.start()
        for cycle in range(3):
            time.sleep(1.0)
            fleet.start(f"join-{cycle}", "worker")
            time.sleep(2.5)
            wait_for_new_steps(crash_log, timeout_s=10)
            assert fleet.terminate(f"join-{cycle}") == 0
            time.sleep(1.5)
        # Session expiry: a worker frozen past its session is expelled from the group
        # with attempts in flight, and carries on with them when it thaws.
        fleet.start("frozen", "worker")
        time.sleep(2.5)
        wait_for_new_steps(crash_log, timeout_s=10)
        fleet.signal("frozen", signal.SIGSTOP)
        time.sleep(SESSION_TIMEOUT_S + 3)
        fleet.signal("frozen", signal.SIGCONT)
        time.sleep(1.0)
        assert fleet.terminate("frozen") == 0
        sender.join(60)
        client.close()
        results = read_results(settings, {r.id for r in requests}, timeout_s=180)
        assert fleet.alive("w1") and fleet.alive("scheduler")
    finally:
        fleet.stop_all()

    assert_once_each(results, {r.id for r in requests})
    steps = StepLog.read(crash_log)
    steps.assert_no_seen_step_ran_again()
    print(f"{steps.executions - 3 * INVOCATIONS} step executions repeated (results never seen)")
