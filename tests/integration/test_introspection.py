"""Why is it waiting, on the real broker: the Admin API and CLI over the scheduler's state."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipeline import Context, Service
from pipeline.client import Client
from pipeline.codec.records import WireCodec
from pipeline.core.limits import LimitRule, RulePattern, RuleSet, put
from pipeline.core.model import ResultStatus
from pipeline.runtime.limit_rules import LimitRuleWriter
from pipeline.settings import Settings
from tests.support.admin_api import admin_api_over_views
from tests.support.runtime import run_cli, running_pipeline, runtime_settings
from topics.provision import provision

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
HOLD_S = 60.0


def gated_service(release: threading.Event) -> Service:
    """A handler that runs until `release` is set, so its queue stays full meanwhile."""
    service = Service("Gate")

    @service.handler()
    async def hold(ctx: Context, request: object) -> None:
        # In a thread: blocking the worker's event loop would stall the whole worker.
        await asyncio.to_thread(release.wait, HOLD_S)

    return service


def write_rules(settings: Settings, *rules: LimitRule) -> None:
    writer = LimitRuleWriter(settings.cluster, settings.topic_names.limits, WireCodec())
    try:
        writer.write(put(RuleSet(), rules, expected_version=0))
    finally:
        writer.close()


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with admin_api_over_views(settings) as client:
        yield client


@pytest.fixture
def release() -> threading.Event:
    return threading.Event()


@contextmanager
def gated_pipeline(
    kafka_bootstrap: str, topic_prefix: str, release: threading.Event
) -> Iterator[Settings]:
    """The pipeline running `gated_service` under a concurrency-1 rule on `acme/*`."""
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    # The rule is in place before the scheduler starts, so it governs the first admission.
    provision(kafka_bootstrap, settings.catalogue)
    write_rules(settings, LimitRule("per-key", RulePattern.parse("acme/*"), concurrency=1))
    with running_pipeline(settings, [gated_service(release)]):
        try:
            yield settings
        finally:
            # A failed test must not leave handlers holding the worker while it stops.
            release.set()


@pytest.fixture
def settings(
    kafka_bootstrap: str, topic_prefix: str, release: threading.Event
) -> Iterator[Settings]:
    with gated_pipeline(kafka_bootstrap, topic_prefix, release) as settings:
        yield settings


def eventually(probe: Callable[[], Any], accept: Callable[[Any], bool]) -> Any:
    """The first value of `probe` that `accept`s; the views lag the scheduler a little."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        value = probe()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after {TIMEOUT_S} s"
        time.sleep(0.1)


def test_a_full_queue_says_what_blocks_it_and_where_each_invocation_stands(
    settings: Settings, api: TestClient, release: threading.Event
) -> None:
    with Client(settings) as client:
        ids = [client.send("Gate/hold", {}, scope="acme", limit_key="k") for _ in range(3)]

        queue = eventually(
            lambda: api.get("/queues/acme/k").json(),
            lambda body: body.get("running") == 1 and body.get("queued") == 2,
        )
        assert queue["head_blocker"] == "concurrency"
        assert queue["rule"]["pattern"] == "acme/*"
        assert queue["rule"]["concurrency"] == 1
        assert queue["next_eligible"] is None

        listed = api.get("/queues", params={"scope": "acme"}).json()["queues"]
        assert [(q["queue_id"], q["queued"], q["running"]) for q in listed] == [("acme/k", 2, 1)]

        # Ids are sent in order on one partition, so they queue in that order.
        first, head, last = (api.get(f"/invocations/{i}").json() for i in ids)
        assert (first["status"], first["waiting"]) == ("running", None)
        assert (head["waiting"]["position"], head["waiting"]["ahead"]) == (1, 0)
        waiting = last["waiting"]
        assert (waiting["position"], waiting["ahead"]) == (2, 1)
        assert (waiting["blocker"], waiting["blocker_rule_id"]) == ("concurrency", "per-key")
        assert waiting["queue_path"] == "/queues/acme/k"

        shown = run_cli(settings, "queues", "show", "acme/k")
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        assert (report["running"], report["queued"], report["head_blocker"]) == (
            1,
            2,
            "concurrency",
        )

        release.set()
        results = [client.result(i, timeout_s=TIMEOUT_S) for i in ids]

    assert [result.status for result in results] == [ResultStatus.COMPLETED] * 3
    idle = eventually(lambda: api.get("/queues/acme/k"), lambda r: r.status_code == 404)
    assert "no invocation waits or runs in queue 'acme/k'" in idle.json()["error"]["message"]
