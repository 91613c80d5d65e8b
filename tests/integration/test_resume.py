"""Resuming a paused invocation on the real broker: Admin API and CLI to a completed result."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from admin_api import create_app
from pipeline import Context, RetryPolicy, Service
from pipeline.client import Client
from pipeline.codec.records import WireCodec
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.model import OnExhausted, ResultStatus
from pipeline.core.partitioning import partition_for
from pipeline.core.state import Invocation
from pipeline.runtime.commands import InvocationCommandProducer
from pipeline.settings import Settings
from pipeline.views.catalog import ServiceCatalogView
from pipeline.views.scheduler_state import SchedulerStateView
from tests.support.limit_rules import memory_limit_rules
from tests.support.runtime import run_cli, running_pipeline, runtime_settings

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0

# The worker runs the handler on its own thread in this process; the test reads these.
# Keyed by invocation id so that tests sharing the module never see each other's counts.
STEP_EXECUTIONS: Counter[str] = Counter()
MAY_SUCCEED = threading.Event()

service = Service("Resumable")


@service.handler(
    retry=RetryPolicy(
        max_attempts=2,
        initial_interval_ms=10,
        max_interval_ms=20,
        on_exhausted=OnExhausted.PAUSE,
    )
)
async def charge(ctx: Context, request: dict[str, str]) -> dict[str, str]:
    def reserve() -> str:
        STEP_EXECUTIONS[ctx.invocation_id] += 1
        return f"reserved for {request['order']}"

    reservation = await ctx.run("reserve", reserve)
    if not MAY_SUCCEED.is_set():
        raise RuntimeError("payment provider unavailable")
    return {"reservation": reservation}


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Iterator[Settings]:
    MAY_SUCCEED.clear()
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    with running_pipeline(settings, [service]):
        yield settings


@pytest.fixture
def state_view(settings: Settings) -> Iterator[SchedulerStateView]:
    view = SchedulerStateView(settings.cluster, settings.topic_names, WireCodec())
    view.start()
    try:
        assert view.wait_caught_up(TIMEOUT_S)
        yield view
    finally:
        view.stop()


def wait_paused(view: SchedulerStateView, invocation_id: str) -> Invocation:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        invocation = view.invocation(invocation_id)
        if invocation is not None and invocation.status is InvocationStatus.PAUSED:
            return invocation
        assert time.monotonic() < deadline, f"not paused in time: {invocation}"
        time.sleep(0.05)


def assert_completes_on_third_attempt(client: Client, invocation_id: str) -> None:
    result = client.result(invocation_id, timeout_s=TIMEOUT_S)
    assert result.status is ResultStatus.COMPLETED, result.failure
    assert result.attempts == 3
    assert result.output == b'{"reservation":"reserved for o-1"}'
    # Run in attempt 1, replayed from the journal in attempts 2 and 3.
    assert STEP_EXECUTIONS[invocation_id] == 1


def test_admin_api_resumes_a_paused_invocation_to_completion(
    settings: Settings, state_view: SchedulerStateView
) -> None:
    with Client(settings) as client:
        invocation_id = client.send("Resumable/charge", {"order": "o-1"})

        paused = wait_paused(state_view, invocation_id)
        assert paused.attempt == 2
        assert paused.last_failure is not None
        assert "payment provider unavailable" in paused.last_failure.message
        assert [entry.name for entry in paused.journal] == ["reserve"]
        with pytest.raises(TimeoutError):
            client.result(invocation_id, timeout_s=1.0)

        MAY_SUCCEED.set()
        codec = WireCodec()
        catalog = ServiceCatalogView(settings.cluster, settings.topic_names, codec)
        commands = InvocationCommandProducer(
            settings.cluster,
            settings.topic_names,
            settings.runtime_partitions,
            codec,
        )
        catalog.start()
        try:
            app = create_app(
                settings,
                invocations=state_view,
                services=catalog,
                commands=commands,
                limits=memory_limit_rules(),
            )
            token = settings.admin_api_tokens[0].get_secret_value()
            http = TestClient(app, headers={"Authorization": f"Bearer {token}"})
            response = http.post(f"/invocations/{invocation_id}/resume")
            assert response.status_code == 202, response.text
            assert response.json() == {
                "invocation_id": invocation_id,
                "status": "resume-requested",
            }

            assert_completes_on_third_attempt(client, invocation_id)
            deadline = time.monotonic() + TIMEOUT_S
            while (again := http.post(f"/invocations/{invocation_id}/resume")).status_code != 409:
                assert time.monotonic() < deadline, again.text
                time.sleep(0.05)
            assert "is completed; only a paused invocation" in again.json()["error"]["message"]
        finally:
            catalog.stop()
            commands.close()


def test_cli_resumes_a_paused_invocation_by_id_and_partition_key(
    settings: Settings, state_view: SchedulerStateView
) -> None:
    invocation_id, scope = "resume-by-cli", "tenant-a"
    # With a scope, the partition key is the scope, not the id: the CLI must be told, and
    # the id's own partition would not hold the invocation.
    assert partition_for(scope, settings.runtime_partitions) != partition_for(
        invocation_id, settings.runtime_partitions
    )
    with Client(settings) as client:
        client.send("Resumable/charge", {"order": "o-1"}, scope=scope, invocation_id=invocation_id)
        assert wait_paused(state_view, invocation_id).attempt == 2

        MAY_SUCCEED.set()
        resumed = run_cli(
            settings, "invocations", "resume", invocation_id, "--partition-key", scope
        )
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout) == {
            "invocation_id": invocation_id,
            "status": "resume-requested",
        }

        assert_completes_on_third_attempt(client, invocation_id)
