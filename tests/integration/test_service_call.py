"""`ctx.service_call` end to end: calls into scoped queues, suspension, and what a
suspended invocation does with its queue's concurrency slot."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import Context, Service
from pipeline.client import Client
from pipeline.core.limits import LimitRule, RulePattern
from pipeline.settings import Settings
from tests.integration.test_flow_control import max_overlap, write_rules
from tests.support.runtime import (
    register,
    running_pipeline,
    running_worker,
    runtime_settings,
    scheduler_process,
)
from topics.provision import provision

pytestmark = pytest.mark.integration

lock = threading.Lock()
steps: list[str] = []  # each ctx.run step the callers executed
callee_runs: list[tuple[float, float]] = []
callee_ids: set[str] = set()  # the callee invocations that ran
caller = Service("Caller")
callee = Service("Callee")


@callee.handler()
async def double(ctx: Context, request: dict[str, float]) -> float:
    started = time.monotonic()
    await asyncio.sleep(request["seconds"])
    with lock:
        callee_runs.append((started, time.monotonic()))
        callee_ids.add(ctx.invocation_id)
    return request["x"] * 2


@caller.handler()
async def fan(ctx: Context, request: dict[str, float]) -> float:
    def note() -> str:
        with lock:
            steps.append(ctx.invocation_id)
        return "noted"

    await ctx.run("note", note)
    total = 0.0
    for x in range(int(request["calls"])):
        total += await ctx.scope("svc").service_call(
            "Callee/double", {"x": x, "seconds": request["seconds"]}, limit_key=f"k{x}"
        )
    return total


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Iterator[Settings]:
    steps.clear()
    callee_runs.clear()
    callee_ids.clear()
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    with running_pipeline(settings, [caller, callee]):
        yield settings


def test_calls_return_the_callees_outputs_and_replay_runs_no_step_twice(
    settings: Settings,
) -> None:
    with Client(settings) as client:
        invocation_id = client.send("Caller/fan", {"calls": 3, "seconds": 0})
        result = client.result(invocation_id, timeout_s=60)
    assert result.output == b"6.0"
    # One attempt to start, and one more after each call's result came in.
    assert result.attempts == 4
    assert steps == [invocation_id], "a step the handler saw ran again on a resume"
    assert len(callee_runs) == 3


@pytest.mark.parametrize("hold", [False, True])
def test_a_suspended_caller_frees_its_slot_unless_the_rule_holds_it(
    settings: Settings, hold: bool
) -> None:
    rule = LimitRule(
        "one-job", RulePattern.parse("jobs/*"), concurrency=1, hold_while_suspended=hold
    )
    write_rules(settings, 0, rule)
    time.sleep(1)  # the scheduler polls the rules between batches
    with Client(settings) as client:
        ids = [
            client.send("Caller/fan", {"calls": 1, "seconds": 1}, scope="jobs", limit_key="q")
            for _ in range(2)
        ]
        for invocation_id in ids:
            assert client.result(invocation_id, timeout_s=60).output == b"0.0"
    overlap = max_overlap(callee_runs)
    # Freed: the second caller starts while the first one's callee runs, so both
    # callees overlap. Held: the second caller waits for the whole first one.
    assert overlap == (1 if hold else 2)


def test_scheduler_kill_9_loses_no_call_and_no_result(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    steps.clear()
    callee_runs.clear()
    callee_ids.clear()
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    provision(kafka_bootstrap, settings.catalogue)
    register(settings, [caller, callee])
    with (
        scheduler_process(settings, "calls-crash", tmp_path / "scheduler.log") as scheduler,
        running_worker(settings, [caller, callee]),
        Client(settings) as client,
    ):
        requests = [
            client.request(
                "Caller/fan", {"calls": 3, "seconds": 0.1}, scope="jobs", limit_key=f"k{i}"
            )
            for i in range(60)
        ]
        client.send_requests(requests)
        for delay in (1.0, 1.0):
            time.sleep(delay)
            scheduler.kill_and_restart()
        deadline = time.monotonic() + 120
        while len(callee_ids) < 180:
            assert time.monotonic() < deadline, f"{len(callee_ids)} of 180 calls ran"
            time.sleep(0.1)
        results = [client.result(r.id, timeout_s=60) for r in requests[::6]]
    assert all(r.output == b"6.0" for r in results)
    assert sorted(steps) == sorted(r.id for r in requests), "a seen step ran again"
    # A call's id is derived from its caller and its entry index, so 180 ids means every
    # call ran and no replay made one anew.
    assert len(callee_ids) == 180
