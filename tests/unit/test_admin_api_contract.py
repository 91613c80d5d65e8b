"""What the Admin API answers before and around its routes: token roles, sizes, paths,
error shapes and the OpenAPI document, as a fuzzer and a careful new user found them."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from admin_api import create_app
from pipeline.codec.records import WireCodec
from pipeline.core.limits import LimitRule, RulePattern, RuleSet
from pipeline.kafka.config import ClusterConfig
from pipeline.runtime.limit_rules import LimitRuleStore, LimitRuleWriter
from pipeline.settings import Settings
from tests.support.limit_rules import MemoryRuleCache, memory_limit_rules
from tests.support.state_replica import replica
from tests.unit.test_admin_api import CommandLog, ServiceTable

ADMIN, READER = "admin-token", "read-token"


def api(**settings: object) -> TestClient:
    app = create_app(
        Settings(
            admin_api_tokens=(SecretStr(ADMIN),),
            admin_api_read_tokens=(SecretStr(READER),),
            **settings,  # type: ignore[arg-type]
        ),
        invocations=replica(),
        services=ServiceTable(),
        commands=CommandLog(),
        limits=memory_limit_rules(),
    )
    return TestClient(app)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


WRITES = [
    ("PUT", "/limits/rules"),
    ("DELETE", "/limits/rules/some-rule"),
    ("POST", "/invocations/some-id/resume"),
    ("PUT", "/deployments/Greeter/limits"),
    ("DELETE", "/deployments/Greeter/limits"),
]


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_an_anonymous_malformed_body_is_401_not_a_parse_error(method: str, path: str) -> None:
    response = api().request(
        method, path, content=b"{not json", headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_a_read_token_may_not_change_anything(method: str, path: str) -> None:
    response = api().request(method, path, json={}, headers=bearer(READER))

    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "forbidden"
    assert "role admin" in response.json()["error"]["message"]


def test_a_read_token_reads_and_an_admin_token_writes() -> None:
    client = api()
    assert client.get("/limits/rules", headers=bearer(READER)).status_code == 200
    changed = client.put(
        "/limits/rules",
        json={"rules": [{"id": "r", "pattern": "acme/*", "concurrency": 1}]},
        headers=bearer(ADMIN),
    )
    assert changed.status_code == 200, changed.text


def test_every_write_route_of_the_app_is_refused_to_a_read_token() -> None:
    client = api()
    for route in client.app.routes:  # type: ignore[attr-defined]
        for method in getattr(route, "methods", set()) - {"GET", "HEAD"}:
            path = route.path.replace("{", "").replace("}", "").replace(":path", "")
            response = client.request(method, path, json={}, headers=bearer(READER))
            assert response.status_code == 403, f"{method} {path}: {response.status_code}"


def test_a_body_over_the_limit_is_413_before_it_is_parsed() -> None:
    client = api(admin_api_max_body_bytes=4096)
    big = b'{"rules": [{"id": "' + b"x" * 10_000_000 + b'"}]}'

    response = client.put("/limits/rules", content=big, headers=bearer(ADMIN))

    assert response.status_code == 413, response.text[:200]
    assert "4096 bytes" in response.json()["error"]["message"]
    assert len(response.content) < 1000


def test_a_streamed_body_over_the_limit_is_413() -> None:
    client = api(admin_api_max_body_bytes=4096)

    def chunks() -> object:
        for _ in range(100):
            yield b"x" * 1000

    response = client.put("/limits/rules", content=chunks(), headers=bearer(ADMIN))  # type: ignore[arg-type]

    assert response.status_code == 413, response.text[:200]


def test_a_long_value_is_not_echoed_back_and_no_python_type_is_named() -> None:
    client = api()
    rule = {"id": "r", "pattern": "acme/*", "burst": "x" * 100_000, "y" * 50_000: 1}

    response = client.put("/limits/rules", json={"rules": [rule]}, headers=bearer(ADMIN))

    assert response.status_code == 422
    assert len(response.content) < 2_000
    assert "<class" not in response.text and "Error" not in response.json()["error"]["message"]


def test_a_huge_number_is_refused_with_its_bound_not_an_overflow() -> None:
    body = b'{"rules": [{"id": "r", "pattern": "acme/*", "rate": 1e400, "burst": 1e400}]}'
    headers = {**bearer(ADMIN), "Content-Type": "application/json"}
    response = api().put("/limits/rules", content=body, headers=headers)

    assert response.status_code in (400, 422), response.text
    assert "Overflow" not in response.text and "<class" not in response.text


def test_405_names_every_method_of_the_path() -> None:
    response = api().patch("/limits/rules", json={}, headers=bearer(ADMIN))

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, PUT"
    assert "GET or PUT" in response.json()["error"]["message"]


def test_a_trailing_slash_is_no_redirect_built_from_the_host() -> None:
    response = api().get(
        "/services/", headers={**bearer(ADMIN), "Host": "evil.example"}, follow_redirects=False
    )

    assert response.status_code == 404
    assert "location" not in response.headers


def test_a_trailing_slash_without_token_is_401() -> None:
    assert api().get("/services/", follow_redirects=False).status_code == 401


@pytest.mark.parametrize("path", ["/invocations/abc%0A", "/services/Greeter%0A", "/queues/a/b%00"])
def test_a_control_character_in_the_path_is_400_not_dropped(path: str) -> None:
    response = api().get(path, headers=bearer(ADMIN))

    assert response.status_code == 400, response.text
    assert "control character" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("docs", "anonymous", "with_token"),
    [("public", 200, 200), ("token", 401, 200), ("off", 401, 404)],
)
def test_the_documentation_is_public_token_only_or_off(
    docs: str, anonymous: int, with_token: int
) -> None:
    client = api(admin_api_docs=docs)
    for path in ("/openapi.json", "/docs"):
        assert client.get(path).status_code == anonymous, path
        assert client.get(path, headers=bearer(READER)).status_code == with_token, path


def test_the_openapi_document_declares_the_errors_the_api_gives() -> None:
    schema = api().get("/openapi.json").json()

    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    put_rules = schema["paths"]["/limits/rules"]["put"]["responses"]
    for status in ("400", "401", "403", "413", "422"):
        assert put_rules[status]["content"]["application/json"]["schema"] == error, status
    get_rules = schema["paths"]["/limits/rules"]["get"]["responses"]
    assert "403" not in get_rules and "401" in get_rules
    assert "401" not in schema["paths"]["/health"]["get"]["responses"]
    rule = schema["components"]["schemas"]["LimitRuleModel"]["properties"]
    assert rule["rate"]["minimum"] == 1 / 86_400 and rule["burst"]["minimum"] == 1
    assert schema["components"]["schemas"]["LimitRulesPut"]["properties"]["rules"]["minItems"] == 1


def test_a_rule_set_that_outgrows_a_record_is_413_naming_the_limit_not_503() -> None:
    rules = tuple(
        LimitRule(f"rule-{n:05d}-" + "x" * 200, RulePattern.parse(f"s{n}/*"), concurrency=1)
        for n in range(4_500)
    )
    writer = LimitRuleWriter(ClusterConfig("127.0.0.1:1"), "limits", WireCodec())
    app = create_app(
        Settings(admin_api_tokens=(SecretStr(ADMIN),)),
        invocations=replica(),
        services=ServiceTable(),
        commands=CommandLog(),
        limits=LimitRuleStore(MemoryRuleCache(RuleSet(1, rules)), writer),
    )
    more = [{"id": f"more-{n}-" + "y" * 200, "pattern": f"m{n}/*"} for n in range(1_000)]
    try:
        response = TestClient(app).put("/limits/rules", json={"rules": more}, headers=bearer(ADMIN))
    finally:
        writer.close(0.1)

    assert response.status_code == 413, response.text[:300]
    assert "1000000 bytes" in response.json()["error"]["message"]
