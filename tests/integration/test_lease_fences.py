"""A lease is fenced only once the journal is read to its end: a heartbeat that Kafka
acknowledged before the lease ran out renews it, even when the scheduler's fetches lag
behind the journal (a slow broker, a busy network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.client import Client
from pipeline.runtime.scheduler import SchedulerProcessor
from tests.support import crash_service
from tests.support.fleet import StepLog, assert_once_each, read_results
from tests.support.runtime import register, running_worker, runtime_settings
from tests.support.runtime import running_scheduler as _running_scheduler
from topics.provision import provision

FETCH_LAG_MS = 1_500


class LaggingScheduler(SchedulerProcessor):
    """Its fetches come back only every `FETCH_LAG_MS`: what it last fetched, the end
    of the journal as it knows it, is that much behind the journal."""

    def _consumer_config(self) -> dict[str, object]:
        return {
            **super()._consumer_config(),
            "fetch.min.bytes": 10_000_000,
            "fetch.wait.max.ms": FETCH_LAG_MS,
        }


def test_heartbeats_acknowledged_in_time_keep_the_lease_behind_a_lagging_fetch(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_log = tmp_path / "steps.log"
    monkeypatch.setenv("CRASH_LOG", str(crash_log))
    # Heartbeats every 300 ms hold a lease for 1.5 s: shorter than the fetch lag, so
    # only reports the scheduler has not fetched yet keep each attempt alive.
    settings = runtime_settings(
        kafka_bootstrap,
        topic_prefix,
        heartbeat_timeout_ms=1_500,
        lease_margin_ms=600,
        lease_timeout_ms=10_000,
    )
    provision(kafka_bootstrap, settings.catalogue)
    register(settings, [crash_service.service])
    monkeypatch.setattr("tests.support.runtime.SchedulerProcessor", LaggingScheduler)
    with running_worker(settings, [crash_service.service]), _running_scheduler(settings):
        with Client(settings) as client:
            ids = {client.send("Crash/paced", 2.0) for _ in range(20)}
        results = read_results(settings, ids, timeout_s=90, quiet_s=3)
    StepLog.read(crash_log).assert_no_seen_step_ran_again()
    assert_once_each(results, ids)
    assert all(r.attempts == 1 for r in results), [r.attempts for r in results]
