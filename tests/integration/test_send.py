"""A handler sends scoped invocations; a retry of the sender sends nothing twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from pipeline import Context, RetryPolicy, Service
from pipeline.client import Client
from pipeline.core.model import ResultStatus
from pipeline.settings import Settings
from tests.support.runtime import running_pipeline, runtime_settings

pytestmark = pytest.mark.integration

received: Counter[tuple[str, str | None]] = Counter()
received_lock = threading.Lock()
service = Service("Fanout")


@service.handler(retry=RetryPolicy(max_attempts=3, initial_interval_ms=10, max_interval_ms=20))
async def fan_out(ctx: Context, teams: list[str]) -> list[str]:
    sent = [await ctx.scope(team).send("Fanout/notify", team, limit_key="alerts") for team in teams]
    if ctx.attempt == 1:
        raise RuntimeError("fail after sending, to prove the retry sends nothing again")
    return sent


@service.handler()
async def notify(ctx: Context, team: str) -> str:
    with received_lock:
        received[(team, ctx.invocation_id)] += 1
    return team


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Iterator[Settings]:
    received.clear()
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    with running_pipeline(settings, [service]):
        yield settings


def test_sent_invocations_run_once_each_in_their_scope(settings: Settings) -> None:
    with Client(settings) as client:
        sent = client.call("Fanout/fan_out", ["team-1", "team-2"])
        results = [client.result(invocation_id) for invocation_id in sent]
    assert all(r.status is ResultStatus.COMPLETED for r in results)
    deadline = time.monotonic() + 10
    while sum(received.values()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # room for a duplicate to show up
    assert dict(received) == {("team-1", sent[0]): 1, ("team-2", sent[1]): 1}
