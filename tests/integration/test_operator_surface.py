"""What an operator touches on the real broker: topic provisioning, the CLI, the Admin API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from fastapi.testclient import TestClient

from admin_api import create_app
from pipeline.client import Client
from pipeline.codec.records import WireCodec
from pipeline.examples.greeter import service as greeter
from pipeline.runtime.commands import InvocationCommandProducer
from pipeline.settings import Settings
from pipeline.views.catalog import ServiceCatalogView
from pipeline.views.scheduler_state import SchedulerStateView
from tests.support.limit_rules import memory_limit_rules
from tests.support.runtime import run_cli, running_pipeline, runtime_settings
from topics.provision import TopicMismatch, provision


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Iterator[Settings]:
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    with running_pipeline(settings, [greeter]):
        yield settings


def test_provisioning_is_idempotent_and_refuses_a_mismatch(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    created = provision(kafka_bootstrap, settings.catalogue)
    assert sorted(created) == sorted(spec.name for spec in settings.catalogue.specs())
    assert provision(kafka_bootstrap, settings.catalogue) == []

    other = runtime_settings(kafka_bootstrap, topic_prefix + "x.")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(other.topic_names.journal, 1, 1)])[
        other.topic_names.journal
    ].result(30)
    with pytest.raises(TopicMismatch) as mismatch:
        provision(kafka_bootstrap, other.catalogue)
    assert f"{other.topic_names.journal!r} has 1 partitions, the catalogue says 4" in str(
        mismatch.value
    )
    # The CLI says the same, as an error to fix, not with a traceback.
    cli = run_cli(other, "topics", "create")
    assert cli.returncode == 2, cli.stderr
    assert cli.stderr.startswith("pipeline: ") and "Traceback" not in cli.stderr
    assert "has 1 partitions, the catalogue says 4" in cli.stderr


def test_cli_invokes_and_prints_results(settings: Settings) -> None:
    waited = run_cli(settings, "invoke", "Greeter/greet", "--data", '{"name": "Ada"}', "--wait")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["greeting"] == "Hello, Ada!"

    sent = run_cli(settings, "invoke", "Greeter/greet", "--data", "{}", "--idempotency-key", "k")
    invocation_id = sent.stdout.strip()
    assert invocation_id == "idem:Greeter/greet:k"
    got = run_cli(settings, "results", "get", invocation_id)
    result = json.loads(got.stdout)
    assert result["status"] == "failed" and "non-empty" in result["error"]["message"]

    bad = run_cli(settings, "invoke", "Greeter/greet", "--data", "{not json")
    assert bad.returncode == 2 and "--data is not valid JSON" in bad.stderr


def test_admin_api_shows_an_invocation_from_the_changelog(settings: Settings) -> None:
    with Client(settings) as client:
        request = client.request("Greeter/greet", {"name": "Grace"})
        client.call(request.target, {"name": "Grace"}, invocation_id=request.id)
    codec = WireCodec()
    state = SchedulerStateView(settings.cluster, settings.topic_names, codec)
    catalog = ServiceCatalogView(settings.cluster, settings.topic_names, codec)
    commands = InvocationCommandProducer(
        settings.cluster, settings.topic_names, settings.runtime_partitions, codec
    )
    state.start()
    catalog.start()
    try:
        assert state.wait_caught_up(30) and catalog.wait_caught_up(30)
        app = create_app(
            settings,
            invocations=state,
            services=catalog,
            commands=commands,
            limits=memory_limit_rules(),
        )
        token = settings.admin_api_tokens[0].get_secret_value()
        http = TestClient(app, headers={"Authorization": f"Bearer {token}"})
        deadline = time.monotonic() + 10
        while (response := http.get(f"/invocations/{request.id}")).status_code == 404:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        body = response.json()
        assert body["status"] == "completed" and body["attempts"] == 1
        assert [(e["index"], e["name"]) for e in body["journal"]] == [(0, "compose"), (1, "draw")]
        assert http.get("/services/Greeter").json()["name"] == "Greeter"
    finally:
        state.stop()
        catalog.stop()
        commands.close()
