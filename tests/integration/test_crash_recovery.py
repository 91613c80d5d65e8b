"""kill -9 the scheduler and the worker while 2,000 invocations flow; then prove
exactly one result per invocation and no re-execution of a step whose result a
handler had already received."""

from __future__ import annotations

import random
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

INVOCATIONS = 2_000
RATE = 250  # invocations per second
KILLS = 6


def test_kill_9_loses_nothing_and_duplicates_nothing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = runtime_settings(kafka_bootstrap, topic_prefix, lease_timeout_ms=5_000)
    provision(kafka_bootstrap, settings.catalogue)
    crash_log = tmp_path / "steps.log"
    fleet = Fleet(settings, tmp_path, crash_log)
    fleet.start("scheduler", "scheduler", "crash")
    fleet.start("worker", "worker", "crash")
    rng = random.Random(7)
    try:
        client = Client(settings)
        requests = [client.request("Crash/work", i) for i in range(INVOCATIONS)]
        sender = PacedSender(client, requests, RATE)
        sender.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 2.5))
            # Kill while steps are being executed, not while the restarted processes are
            # still joining their groups: otherwise a run can miss all work in flight.
            wait_for_new_steps(crash_log, timeout_s=10)
            victims = rng.choice([["scheduler"], ["worker"], ["scheduler", "worker"]])
            for name in victims:
                fleet.kill(name)
            time.sleep(rng.uniform(0.0, 0.5))
            for name in victims:
                fleet.start(name, name, "crash")
        sender.join(60)
        client.close()
        results = read_results(settings, {r.id for r in requests}, timeout_s=240)
    finally:
        fleet.stop_all()

    assert_once_each(results, {r.id for r in requests})
    # The kills hit work in flight: some invocations needed a second attempt.
    retried = sum(1 for r in results if r.attempts > 1)
    print(f"{retried} of {INVOCATIONS} invocations needed more than one attempt")
    assert retried > 0
    steps = StepLog.read(crash_log)
    steps.assert_no_seen_step_ran_again()
    assert steps.executions >= 3 * INVOCATIONS
    print(f"{steps.executions - 3 * INVOCATIONS} step executions repeated (results never seen)")
