"""Limit rules on the real broker: the Admin API writes, other processes read the same."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from admin_api import create_app
from pipeline.codec.records import WireCodec
from pipeline.core.deployment import DeploymentLimit
from pipeline.core.limits import LimitRule, RulePattern, RuleSet
from pipeline.runtime.limit_rules import (
    RULES_KEY,
    LimitRuleReader,
    LimitRuleStore,
    LimitRuleWriter,
)
from pipeline.settings import Settings
from pipeline.views.limits import LimitRulesView
from tests.support.runtime import run_cli, runtime_settings
from tests.support.state_replica import replica
from tests.unit.test_admin_api import CommandLog, ServiceTable
from topics.provision import provision

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Settings:
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    provision(kafka_bootstrap, settings.catalogue)
    return settings


@pytest.fixture
def codec() -> WireCodec:
    return WireCodec()


@pytest.fixture
def api(settings: Settings, codec: WireCodec) -> Iterator[TestClient]:
    """The Admin API over the real view and writer, as `admin_api.server` wires them."""
    view = LimitRulesView(settings.cluster, settings.topic_names, codec)
    writer = LimitRuleWriter(settings.cluster, settings.topic_names.limits, codec)
    view.start()
    try:
        assert view.wait_caught_up(TIMEOUT_S)
        app = create_app(
            settings,
            invocations=replica(),
            services=ServiceTable(),
            commands=CommandLog(),
            limits=LimitRuleStore(view, writer),
        )
        token = settings.admin_api_tokens[0].get_secret_value()
        yield TestClient(app, headers={"Authorization": f"Bearer {token}"})
    finally:
        view.stop()
        writer.close()


def read_rules(settings: Settings, codec: WireCodec) -> RuleSet:
    """What another process (a scheduler) reads from the beginning of the topic."""
    reader = LimitRuleReader(settings.cluster, settings.topic_names.limits, codec)
    try:
        reader.catch_up(TIMEOUT_S)
        return reader.ruleset()
    finally:
        reader.close()


def write_directly(settings: Settings, codec: WireCodec, ruleset: RuleSet) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    producer.produce(settings.topic_names.limits, codec.encode_ruleset(ruleset), RULES_KEY)
    assert producer.flush(TIMEOUT_S) == 0


ACME = LimitRule("acme", RulePattern.parse("acme/*"), concurrency=2)
VIP = LimitRule("vip", RulePattern.parse("acme/vip"), rate_per_s=50.0, burst=10)


def test_a_put_through_the_api_is_what_another_reader_sees(
    api: TestClient, settings: Settings, codec: WireCodec
) -> None:
    assert read_rules(settings, codec) == RuleSet()

    put = api.put(
        "/limits/rules",
        json={
            "rules": [
                {"id": "acme", "pattern": "acme/*", "concurrency": 2},
                {"id": "vip", "pattern": "acme/vip", "rate": 50, "burst": 10},
            ],
            "if_version": 0,
        },
    )
    assert put.status_code == 200, put.text
    assert put.json()["version"] == 1
    # Read-your-write: the view shows it before the record comes back from Kafka.
    assert api.get("/limits/rules").json() == put.json()
    assert read_rules(settings, codec) == RuleSet(1, (ACME, VIP))

    deleted = api.delete("/limits/rules/vip", params={"if_version": 1})
    assert deleted.status_code == 200, deleted.text
    assert read_rules(settings, codec) == RuleSet(2, (ACME,))

    stale = api.put("/limits/rules", json={"rules": [{"id": "x", "pattern": "*"}], "if_version": 1})
    assert stale.status_code == 409
    assert read_rules(settings, codec) == RuleSet(2, (ACME,))


def test_a_stale_record_never_takes_rules_back(settings: Settings, codec: WireCodec) -> None:
    current = RuleSet(5, (ACME,))
    write_directly(settings, codec, current)
    write_directly(settings, codec, RuleSet(3, (VIP,)))
    # The same version again, with other rules: the first one written stays.
    write_directly(settings, codec, RuleSet(5, (VIP,)))

    assert read_rules(settings, codec) == current

    view = LimitRulesView(settings.cluster, settings.topic_names, codec)
    view.start()
    try:
        assert view.wait_caught_up(TIMEOUT_S)
        assert view.ruleset() == current
    finally:
        view.stop()


def test_a_reader_polls_changes_as_they_come(settings: Settings, codec: WireCodec) -> None:
    reader = LimitRuleReader(settings.cluster, settings.topic_names.limits, codec)
    writer = LimitRuleWriter(settings.cluster, settings.topic_names.limits, codec)
    try:
        reader.catch_up(TIMEOUT_S)
        writer.write(RuleSet(1, (ACME,)))
        reader.catch_up(TIMEOUT_S)
        assert reader.ruleset() == RuleSet(1, (ACME,))
        reader.poll()  # nothing new: no change, no wait
        assert reader.ruleset().version == 1

        writer.write(RuleSet(2, (ACME, VIP)))
        deadline = time.monotonic() + TIMEOUT_S
        while reader.ruleset().version < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
            reader.poll()
        assert reader.ruleset() == RuleSet(2, (ACME, VIP))
    finally:
        reader.close()
        writer.close()


def test_cli_puts_and_gets_rules(settings: Settings, codec: WireCodec, tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"id": "acme", "pattern": "acme/*", "concurrency": 2}]}))

    put = run_cli(settings, "limits", "put", str(rules))
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["version"] == 1

    got = run_cli(settings, "limits", "get")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == json.loads(put.stdout)
    assert read_rules(settings, codec) == RuleSet(1, (ACME,))

    rules.write_text(json.dumps({"rules": [{"id": "b", "pattern": "*"}], "if_version": 0}))
    conflict = run_cli(settings, "limits", "put", str(rules))
    assert conflict.returncode == 2
    assert "at version 1, not the expected version 0" in conflict.stderr


def test_cli_sets_lists_and_lifts_a_deployment_cap(settings: Settings, codec: WireCodec) -> None:
    set_cap = run_cli(settings, "deployments", "set", "Greeter", "3")
    assert set_cap.returncode == 0, set_cap.stderr
    shown = json.loads(set_cap.stdout)
    assert (shown["deployment"], shown["concurrency"], shown["version"]) == ("Greeter", 3, 1)
    assert read_rules(settings, codec).deployment_limit("Greeter") == DeploymentLimit("Greeter", 3)

    listed = run_cli(settings, "deployments", "list")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {
        "version": 1,
        "deployments": [
            {
                "deployment": "Greeter",
                "concurrency": 3,
                "running": 0,
                "awaiting": 0,
                "announced": False,
                "version": 1,
            }
        ],
    }

    bad = run_cli(settings, "deployments", "set", "Greeter", "-1")
    assert bad.returncode == 2, bad.stderr
    assert "concurrency: Input should be greater than or equal to 0" in bad.stderr
    lifted = run_cli(settings, "deployments", "remove", "Greeter")
    assert lifted.returncode == 0, lifted.stderr
    assert read_rules(settings, codec).deployments == ()
