"""Deployment caps through the Admin API, over the real store with in-memory parts."""

from __future__ import annotations

from fastapi.testclient import TestClient
from pydantic import SecretStr

from admin_api import create_app
from pipeline.core.deployment import DeploymentLimit, DeploymentLoad
from pipeline.core.limits import LimitRule, RulePattern, RuleSet
from pipeline.core.model import HandlerDefinition, ServiceDefinition
from pipeline.runtime.limit_rules import LimitRuleStore
from pipeline.settings import Settings
from tests.support.limit_rules import RecordingWriter, memory_limit_rules
from tests.support.state_replica import replica
from tests.unit.test_admin_api import CommandLog, ServiceTable

TOKEN = "s3cret-token"
GREETER = ServiceDefinition("Greeter", (HandlerDefinition("greet"),))
RULE = LimitRule("acme", RulePattern.parse("acme/*"), concurrency=2)


def http(limits: LimitRuleStore, loads: dict[str, DeploymentLoad] | None = None) -> TestClient:
    invocations = replica(deployments=loads)
    app = create_app(
        Settings(admin_api_tokens=(SecretStr(TOKEN),)),
        invocations=invocations,
        services=ServiceTable([GREETER]),
        commands=CommandLog(),
        limits=limits,
    )
    return TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


def test_put_sets_the_cap_in_a_new_version_and_keeps_the_rules() -> None:
    writer = RecordingWriter()
    api = http(memory_limit_rules(RuleSet(1, (RULE,)), writer=writer))

    response = api.put("/deployments/Greeter/limits", json={"concurrency": 5, "if_version": 1})

    assert response.status_code == 200, response.text
    assert response.json() == {
        "deployment": "Greeter",
        "concurrency": 5,
        "running": 0,
        "awaiting": 0,
        "announced": True,
        "version": 2,
    }
    [written] = writer.written
    assert written.rules == (RULE,) and written.deployments == (DeploymentLimit("Greeter", 5),)


def test_get_shows_what_runs_under_the_cap_and_what_awaits_it() -> None:
    ruleset = RuleSet(3, deployments=(DeploymentLimit("Greeter", 4),))
    load = DeploymentLoad("Greeter", running=4, demand=((0, 2), (3, 5)))
    api = http(memory_limit_rules(ruleset), {"Greeter": load})

    shown = api.get("/deployments/Greeter/limits").json()

    assert (shown["concurrency"], shown["running"], shown["awaiting"]) == (4, 4, 7)
    listed = api.get("/deployments").json()
    assert listed["version"] == 3 and [d["deployment"] for d in listed["deployments"]] == [
        "Greeter"
    ]


def test_a_service_without_a_cap_shows_none_and_an_unknown_name_is_404() -> None:
    api = http(memory_limit_rules())
    assert api.get("/deployments/Greeter/limits").json()["concurrency"] is None
    response = api.get("/deployments/Nobody/limits")
    assert response.status_code == 404
    assert "GET /deployments lists them" in response.json()["error"]["message"]


def test_bad_caps_are_422_and_write_nothing() -> None:
    writer = RecordingWriter()
    api = http(memory_limit_rules(writer=writer))

    negative = api.put("/deployments/Greeter/limits", json={"concurrency": -1})
    bad_name = api.put("/deployments/bad%20name/limits", json={"concurrency": 1})
    unknown_field = api.put("/deployments/Greeter/limits", json={"max": 1})
    too_big = api.put("/deployments/Greeter/limits", json={"concurrency": 2**31})
    a_boolean = api.put("/deployments/Greeter/limits", json={"concurrency": True})

    bad = (negative, bad_name, unknown_field, too_big, a_boolean)
    assert [r.status_code for r in bad] == [422] * 5
    assert "'bad name' is not a service name" in bad_name.json()["error"]["message"]
    assert "<= 2147483647" in too_big.json()["error"]["message"]
    assert writer.written == []


def test_delete_lifts_the_cap_and_a_missing_cap_is_404() -> None:
    writer = RecordingWriter()
    ruleset = RuleSet(2, deployments=(DeploymentLimit("Greeter", 1),))
    api = http(memory_limit_rules(ruleset, writer=writer))

    lifted = api.delete("/deployments/Greeter/limits?if_version=2")
    again = api.delete("/deployments/Greeter/limits")

    assert lifted.status_code == 200 and lifted.json()["concurrency"] is None
    assert again.status_code == 404
    assert [r.deployments for r in writer.written] == [()]


def test_a_cap_change_at_another_version_is_409() -> None:
    api = http(memory_limit_rules(RuleSet(4)))
    response = api.put("/deployments/Greeter/limits", json={"concurrency": 1, "if_version": 3})
    assert response.status_code == 409
