"""kill -9 the scheduler while limited queues are full: limits hold (per key and for
the scope as a whole), nothing queued is lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from pipeline import Context, Service
from pipeline.client import Client
from pipeline.core.limits import LimitRule, RulePattern
from tests.integration.test_flow_control import max_overlap, write_rules
from tests.support.runtime import register, running_worker, runtime_settings, scheduler_process
from topics.provision import provision

pytestmark = pytest.mark.integration

KEYS = 30
PER_KEY = 20
SCOPE_LIMIT = 24  # below KEYS x 2, so that the scope's budget binds too

runs: list[tuple[str, str, float, float]] = []  # (invocation id, key, start, end)
runs_lock = threading.Lock()
service = Service("Crashy")


@service.handler()
async def hold(ctx: Context, key: str) -> None:
    started = time.monotonic()
    await asyncio.sleep(0.2)
    with runs_lock:
        runs.append((ctx.invocation_id, key, started, time.monotonic()))


def test_scheduler_kill_9_keeps_limits_and_loses_no_queued_invocation(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    runs.clear()
    settings = runtime_settings(kafka_bootstrap, topic_prefix, worker_slots=512)
    provision(kafka_bootstrap, settings.catalogue)
    register(settings, [service])
    write_rules(
        settings,
        0,
        LimitRule("per-key", RulePattern.parse("acme/*"), concurrency=2),
        LimitRule("acme-total", RulePattern.parse("acme"), concurrency=SCOPE_LIMIT),
    )
    with (
        scheduler_process(settings, "limits-crash", tmp_path / "scheduler.log") as scheduler,
        running_worker(settings, [service]),
        Client(settings) as client,
    ):
        requests = [
            client.request("Crashy/hold", f"k{k}", scope="acme", limit_key=f"k{k}")
            for _ in range(PER_KEY)
            for k in range(KEYS)
        ]
        client.send_requests(requests)
        for delay in (1.0, 1.0):
            time.sleep(delay)
            scheduler.kill_and_restart()
        deadline = time.monotonic() + 120
        expected = {r.id for r in requests}
        while {i for i, _, _, _ in runs} != expected:
            assert time.monotonic() < deadline, f"{len(runs)} of {len(expected)} ran"
            time.sleep(0.1)
        results = [client.result(r.id, timeout_s=30) for r in requests[:: KEYS * 4]]

    assert all(r.attempts == 1 for r in results)
    assert len(runs) == KEYS * PER_KEY, "an invocation ran twice"
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, key, start_at, end_at in runs:
        by_key[key].append((start_at, end_at))
    assert max(max_overlap(v) for v in by_key.values()) <= 2
    whole_scope = max_overlap([(start_at, end_at) for _, _, start_at, end_at in runs])
    assert whole_scope <= SCOPE_LIMIT, f"the scope ran {whole_scope} at once"
