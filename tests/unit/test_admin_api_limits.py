"""Limit rules through the Admin API, over the real store with an in-memory cache and writer."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from admin_api import create_app
from pipeline.core.limits import LimitRule, RulePattern, RuleSet
from pipeline.errors import RetryableError
from pipeline.runtime.limit_rules import LimitRuleStore
from pipeline.settings import Settings
from tests.support.limit_rules import RecordingWriter, memory_limit_rules
from tests.support.state_replica import replica
from tests.unit.test_admin_api import CommandLog, ServiceTable

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

ACME = LimitRule("acme", RulePattern.parse("acme/*"), concurrency=2)
EVERYONE = LimitRule("everyone", RulePattern.parse("*"), rate_per_s=50.0, burst=10)


def http(limits: LimitRuleStore) -> TestClient:
    app = create_app(
        Settings(admin_api_tokens=(SecretStr(TOKEN),)),
        invocations=replica(),
        services=ServiceTable(),
        commands=CommandLog(),
        limits=limits,
    )
    return TestClient(app, headers=AUTH)


def rule_json(rule_id: str, pattern: str, **limits: object) -> dict[str, object]:
    defaults: dict[str, object] = {
        "concurrency": None,
        "rate": None,
        "burst": 1,
        "weight": 1,
        "max_queued": None,
        "hold_while_suspended": False,
        "paused": False,
    }
    return {"id": rule_id, "pattern": pattern, **defaults, **limits}


def test_get_before_any_change_is_version_zero_without_rules() -> None:
    response = http(memory_limit_rules()).get("/limits/rules")

    assert response.status_code == 200
    assert response.json() == {"version": 0, "rules": []}


def test_get_shows_every_field_of_the_rules_in_force() -> None:
    response = http(memory_limit_rules(RuleSet(4, (ACME, EVERYONE)))).get("/limits/rules")

    assert response.json() == {
        "version": 4,
        "rules": [
            rule_json("acme", "acme/*", concurrency=2),
            rule_json("everyone", "*", rate=50.0, burst=10),
        ],
    }


def test_put_applies_the_batch_in_one_version_and_get_shows_it_at_once() -> None:
    writer = RecordingWriter()
    api = http(memory_limit_rules(RuleSet(1, (ACME,)), writer=writer))

    response = api.put(
        "/limits/rules",
        json={
            "rules": [
                {"id": "acme", "pattern": "acme/*", "concurrency": 5},
                {"id": "vip", "pattern": "acme/vip", "paused": True, "max_queued": 100},
            ],
            "if_version": 1,
        },
    )

    assert response.status_code == 200, response.text
    expected = {
        "version": 2,
        "rules": [
            rule_json("acme", "acme/*", concurrency=5),
            rule_json("vip", "acme/vip", paused=True, max_queued=100),
        ],
    }
    assert response.json() == expected
    assert [ruleset.version for ruleset in writer.written] == [2]
    assert api.get("/limits/rules").json() == expected


def test_put_at_another_version_is_409_naming_both_and_writes_nothing() -> None:
    writer = RecordingWriter()
    api = http(memory_limit_rules(RuleSet(3, (ACME,)), writer=writer))

    response = api.put(
        "/limits/rules", json={"rules": [{"id": "x", "pattern": "*"}], "if_version": 2}
    )

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["type"] == "conflict"
    assert "version 3" in error["message"] and "version 2" in error["message"]
    assert writer.written == []


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"id": "a", "pattern": "a//b"}, "rule pattern 'a//b' is not valid: write *, scope"),
        ({"id": "a", "pattern": "*", "concurrency": -1}, "concurrency -1 must be >= 0"),
        ({"id": "a", "pattern": "*", "rate": 0}, "rate 0.0/s must be finite and at least"),
        ({"id": "a", "pattern": "*", "burst": 0}, "burst 0 must be >= 1"),
        ({"id": "a", "pattern": "acme", "max_queued": 5}, "put max_queued on acme/* instead"),
        # Kept in Avro ints: a reader of the limits topic could not decode more.
        ({"id": "a", "pattern": "*", "burst": 2**31}, "burst 2147483648 must be <= 2147483647"),
        ({"id": "a", "pattern": "*", "weight": 2**40}, "must be <= 2147483647"),
        ({"id": "a", "pattern": "*", "concurrency": 2**31}, "must be <= 2147483647"),
        ({"id": "a", "pattern": "*", "max_queued": 2**31}, "must be <= 2147483647"),
    ],
)
def test_a_bad_pattern_or_value_is_422_with_the_core_message(
    rule: dict[str, object], message: str
) -> None:
    writer = RecordingWriter()
    api = http(memory_limit_rules(writer=writer))

    response = api.put("/limits/rules", json={"rules": [{"id": "ok", "pattern": "*"}, rule]})

    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid"
    assert message in response.json()["error"]["message"]
    # All or nothing: the valid rule of the batch was not written either.
    assert writer.written == []
    assert api.get("/limits/rules").json()["version"] == 0


@pytest.mark.parametrize(("field", "value"), [("burst", True), ("weight", False), ("paused", 0)])
def test_json_true_is_no_number_and_0_no_boolean(field: str, value: object) -> None:
    writer = RecordingWriter()
    rule = {"id": "a", "pattern": "*", field: value}
    response = http(memory_limit_rules(writer=writer)).put("/limits/rules", json={"rules": [rule]})

    assert response.status_code == 422
    assert f"rules.0.{field}" in response.json()["error"]["message"]
    assert writer.written == []


def test_a_batch_is_applied_in_order_so_a_repeated_id_ends_as_its_last_rule() -> None:
    response = http(memory_limit_rules()).put(
        "/limits/rules",
        json={"rules": [{"id": "a", "pattern": "*"}, {"id": "a", "pattern": "acme"}]},
    )

    assert response.status_code == 200, response.text
    assert [(r["id"], r["pattern"]) for r in response.json()["rules"]] == [("a", "acme")]


def test_an_unknown_field_is_422_naming_it() -> None:
    response = http(memory_limit_rules()).put(
        "/limits/rules", json={"rules": [{"id": "a", "pattern": "*", "concurency": 2}]}
    )

    assert response.status_code == 422
    assert "rules.0.concurency" in response.json()["error"]["message"]


def test_delete_removes_the_rule_in_a_new_version() -> None:
    api = http(memory_limit_rules(RuleSet(2, (ACME, EVERYONE))))

    response = api.delete("/limits/rules/acme", params={"if_version": 2})

    assert response.status_code == 200
    assert response.json() == {
        "version": 3,
        "rules": [rule_json("everyone", "*", rate=50.0, burst=10)],
    }


def test_delete_of_an_unknown_rule_is_404() -> None:
    response = http(memory_limit_rules(RuleSet(2, (ACME,)))).delete("/limits/rules/nope")

    assert response.status_code == 404
    assert "limit rule 'nope' does not exist" in response.json()["error"]["message"]


def test_delete_at_another_version_is_409() -> None:
    response = http(memory_limit_rules(RuleSet(2, (ACME,)))).delete(
        "/limits/rules/acme", params={"if_version": 1}
    )

    assert response.status_code == 409


def test_a_write_kafka_does_not_acknowledge_is_503_and_changes_nothing() -> None:
    writer = RecordingWriter(RetryableError("not acknowledged", retry_after_ms=1_000))
    api = http(memory_limit_rules(RuleSet(1, (ACME,)), writer=writer))

    response = api.put("/limits/rules", json={"rules": [{"id": "x", "pattern": "*"}]})

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert api.get("/limits/rules").json()["version"] == 1


def test_changes_wait_until_the_rules_are_read_from_kafka() -> None:
    writer = RecordingWriter()
    api = http(memory_limit_rules(writer=writer, caught_up=False))

    response = api.put("/limits/rules", json={"rules": [{"id": "x", "pattern": "*"}]})

    assert response.status_code == 503
    assert "still being read" in response.json()["error"]["message"]
    assert writer.written == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/limits/rules"), ("PUT", "/limits/rules"), ("DELETE", "/limits/rules/acme")],
)
def test_limit_routes_need_a_token(method: str, path: str) -> None:
    api = http(memory_limit_rules(RuleSet(1, (ACME,))))

    response = api.request(
        method, path, headers={"Authorization": ""}, json={"rules": [{"id": "a", "pattern": "*"}]}
    )

    assert response.status_code == 401
    assert api.get("/limits/rules").json()["version"] == 1


def test_the_routes_document_how_a_star_rule_applies() -> None:
    schema = http(memory_limit_rules()).get("/openapi.json").json()

    put = schema["paths"]["/limits/rules"]["put"]
    description = " ".join(put["description"].split())
    assert "each of those queues gets a budget of its own" in description
    assert "never 2 in all" in description
    assert "the most specific matching pattern" in description
    assert {"401", "409", "422", "503"} <= set(put["responses"])
    assert "404" in schema["paths"]["/limits/rules/{rule_id}"]["delete"]["responses"]
