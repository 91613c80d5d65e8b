"""Why-is-it-waiting under a fast rate limit: the Admin API reports what the scheduler
decided, not a recomputation at its own clock over state a few hundred ms old."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from pipeline import Context, Service
from pipeline.client import Client
from pipeline.core.limits import LimitRule, RulePattern
from pipeline.settings import Settings
from tests.integration.test_introspection import write_rules
from tests.support.admin_api import admin_api_over_views
from tests.support.runtime import running_pipeline, runtime_settings
from topics.provision import provision

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
WAITING = 260


def quick_service() -> Service:
    service = Service("Quick")

    @service.handler()
    async def run(ctx: Context, request: object) -> None:
        return None

    return service


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Iterator[Settings]:
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    provision(kafka_bootstrap, settings.catalogue)
    write_rules(settings, LimitRule("fast", RulePattern.parse("fast/*"), rate_per_s=20, burst=5))
    with running_pipeline(settings, [quick_service()]):
        yield settings


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with admin_api_over_views(settings) as client:
        yield client


def test_a_queue_held_by_a_fast_rate_says_rate_in_every_sample(
    settings: Settings, api: TestClient
) -> None:
    with Client(settings) as client:
        client.send_requests(
            [client.request("Quick/run", {}, scope="fast", limit_key="k") for _ in range(WAITING)]
        )
        deadline = time.monotonic() + TIMEOUT_S
        while api.get("/queues/fast/k").json().get("queued", 0) < 100:
            assert time.monotonic() < deadline, "the invocations did not queue up"
            time.sleep(0.05)

        samples = []
        for _ in range(30):
            body = api.get("/queues/fast/k").json()
            samples.append((body["queued"], body["head_blocker"], body["next_eligible"]))
            time.sleep(0.1)

    waiting = [s for s in samples if s[0] > 0]
    assert len(waiting) >= 25, samples
    assert [blocker for _, blocker, _ in waiting] == ["rate"] * len(waiting), samples
    assert all(next_eligible is not None for _, _, next_eligible in waiting), samples
