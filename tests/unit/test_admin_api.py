"""The Admin API over in-memory readers: auth, rendering, errors and the OpenAPI contract."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from admin_api import create_app
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.model import (
    EntryKind,
    Failure,
    HandlerDefinition,
    InvocationRequest,
    JournalEntry,
    OnExhausted,
    RetryPolicy,
    ServiceDefinition,
    Target,
)
from pipeline.core.state import Invocation
from pipeline.errors import RetryableError, ValidationError
from pipeline.runtime.limit_rules import LimitRuleStore
from pipeline.settings import Settings
from tests.support.limit_rules import memory_limit_rules
from tests.support.state_replica import replica

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class ServiceTable:
    def __init__(self, services: Iterable[ServiceDefinition] = ()) -> None:
        self._by_name = {service.name: service for service in services}

    def services(self) -> list[ServiceDefinition]:
        return sorted(self._by_name.values(), key=lambda service: service.name)

    def service(self, name: str) -> ServiceDefinition | None:
        return self._by_name.get(name)


class CommandLog:
    """Records each resume instead of producing it; `failure` makes every send fail."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.resumed: list[Invocation] = []
        self.failure = failure

    def resume(self, invocation: Invocation) -> None:
        if self.failure is not None:
            raise self.failure
        self.resumed.append(invocation)


def settings(*tokens: str) -> Settings:
    return Settings(admin_api_tokens=tuple(SecretStr(token) for token in tokens or (TOKEN,)))


def client(
    invocations: Iterable[Invocation] = (),
    services: Iterable[ServiceDefinition] = (),
    commands: CommandLog | None = None,
    limits: LimitRuleStore | None = None,
) -> TestClient:
    app = create_app(
        settings(),
        invocations=replica(invocations),
        services=ServiceTable(services),
        commands=commands if commands is not None else CommandLog(),
        limits=limits if limits is not None else memory_limit_rules(),
    )
    return TestClient(app)


def failed_after_retries() -> Invocation:
    request = InvocationRequest(
        id="idem:Billing/charge:order-17",
        target=Target("Billing", "charge"),
        input=b"{}",
        created_at_ms=1_700_000_000_000,
        idempotency_key="order-17",
        scope="tenant-a",
        limit_key="user-9/agent-2",
        priority=2,
    )
    return Invocation(
        request=request,
        status=InvocationStatus.FAILED,
        attempt=3,
        journal=(
            JournalEntry(0, EntryKind.RUN, "reserve", value=b"ok"),
            JournalEntry(
                1, EntryKind.RUN, "capture", failure=Failure("card declined", "CardError", True)
            ),
        ),
        first_started_at_ms=1_700_000_000_250,
        finished_at_ms=1_700_000_003_500,
        last_failure=Failure("card declined", "CardError", terminal=True),
    )


def billing_service() -> ServiceDefinition:
    return ServiceDefinition(
        name="Billing",
        handlers=(
            HandlerDefinition(
                "charge", RetryPolicy(max_attempts=3, on_exhausted=OnExhausted.PAUSE)
            ),
            HandlerDefinition("refund"),
        ),
    )


def test_health_needs_no_token() -> None:
    response = client().get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/invocations/x", "/services", "/services/Billing"])
def test_missing_token_is_401_and_says_how_to_send_one(path: str) -> None:
    response = client().get(path)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["type"] == "unauthorized"
    assert "Authorization: Bearer <token>" in error["message"]


@pytest.mark.parametrize(
    "header",
    # Non-ASCII bytes must be refused like any wrong token, not crash the comparison.
    [f"Bearer {TOKEN}x", "Bearer wrong", f"Basic {TOKEN}", "Bearer ünïcode".encode("latin-1")],
)
def test_wrong_token_is_401(header: str | bytes) -> None:
    response = client(services=[billing_service()]).get(
        "/services", headers={"Authorization": header}
    )

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer <token>" in response.json()["error"]["message"]


def test_any_configured_token_is_accepted() -> None:
    app = create_app(
        settings("first", "second"),
        invocations=replica(),
        services=ServiceTable(),
        commands=CommandLog(),
        limits=memory_limit_rules(),
    )

    response = TestClient(app).get("/services", headers={"Authorization": "Bearer second"})

    assert response.status_code == 200


def test_an_app_without_tokens_is_refused_at_build_time() -> None:
    with pytest.raises(ValidationError, match="PIPELINE_ADMIN_API_TOKENS"):
        create_app(
            Settings(admin_api_tokens=()),
            invocations=replica(),
            services=ServiceTable(),
            commands=CommandLog(),
            limits=memory_limit_rules(),
        )


def test_unknown_invocation_is_404_naming_the_id() -> None:
    response = client().get("/invocations/no-such-id", headers=AUTH)

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "not_found"
    assert "'no-such-id'" in error["message"]
    assert "check the id" in error["message"]


def test_invocation_is_rendered_in_full() -> None:
    invocation = failed_after_retries()

    # The id contains a slash, as derived idempotent ids do.
    response = client([invocation]).get(f"/invocations/{invocation.id}", headers=AUTH)

    assert response.status_code == 200
    assert response.json() == {
        "id": "idem:Billing/charge:order-17",
        "status": "failed",
        "target": {"service": "Billing", "handler": "charge", "key": None},
        "attempts": 3,
        "scope": "tenant-a",
        "limit_key": "user-9/agent-2",
        "priority": 2,
        "queue_id": "tenant-a/user-9/agent-2",
        "idempotency_key": "order-17",
        "created_at": "2023-11-14T22:13:20Z",
        "first_started_at": "2023-11-14T22:13:20.250000Z",
        "finished_at": "2023-11-14T22:13:23.500000Z",
        "journal": [
            {"index": 0, "kind": "run", "name": "reserve", "failed": False},
            {"index": 1, "kind": "run", "name": "capture", "failed": True},
        ],
        "last_error": {
            "type": "CardError",
            "message": "card declined",
            "terminal": True,
            "code": None,
        },
        "output_size_bytes": None,
        "waiting": None,
        "awaiting_call": None,
    }


def test_pending_invocation_has_no_times_error_or_output_yet() -> None:
    request = InvocationRequest("inv-1", Target("Greeter", "greet"), b"", created_at_ms=0)
    invocation = Invocation(request=request, status=InvocationStatus.PENDING)

    body = client([invocation]).get("/invocations/inv-1", headers=AUTH).json()

    assert body["status"] == "pending"
    assert body["attempts"] == 0
    assert body["queue_id"] == "/Greeter"
    assert body["first_started_at"] is None
    assert body["finished_at"] is None
    assert body["journal"] == []
    assert body["last_error"] is None


def test_completed_invocation_reports_its_output_size() -> None:
    request = InvocationRequest("inv-2", Target("Greeter", "greet"), b"", created_at_ms=0)
    invocation = Invocation(
        request=request, status=InvocationStatus.COMPLETED, attempt=1, output=b"hello!"
    )

    body = client([invocation]).get("/invocations/inv-2", headers=AUTH).json()

    assert body["output_size_bytes"] == 6


def in_status(
    status: InvocationStatus, invocation_id: str = "idem:Billing/charge:order-17"
) -> Invocation:
    request = InvocationRequest(
        invocation_id, Target("Billing", "charge"), b"{}", created_at_ms=0, scope="tenant-a"
    )
    return Invocation(request=request, status=status, attempt=3)


def test_resume_of_a_paused_invocation_sends_the_command_and_is_202() -> None:
    paused = in_status(InvocationStatus.PAUSED)
    commands = CommandLog()

    # The id contains a slash, as derived idempotent ids do.
    response = client([paused], commands=commands).post(
        f"/invocations/{paused.id}/resume", headers=AUTH
    )

    assert response.status_code == 202
    assert response.json() == {"invocation_id": paused.id, "status": "resume-requested"}
    assert commands.resumed == [paused]


def test_resume_of_an_unknown_invocation_is_404_and_sends_nothing() -> None:
    commands = CommandLog()

    response = client(commands=commands).post("/invocations/no-such-id/resume", headers=AUTH)

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "not_found"
    assert "'no-such-id'" in error["message"]
    assert "check the id" in error["message"]
    assert commands.resumed == []


@pytest.mark.parametrize(
    "status", [s for s in InvocationStatus if s is not InvocationStatus.PAUSED]
)
def test_resume_of_an_invocation_that_is_not_paused_is_409(status: InvocationStatus) -> None:
    invocation = in_status(status, "inv-7")
    commands = CommandLog()

    response = client([invocation], commands=commands).post(
        "/invocations/inv-7/resume", headers=AUTH
    )

    assert response.status_code == 409
    assert response.json()["error"] == {
        "type": "conflict",
        "message": f"invocation 'inv-7' is {status.value}; only a paused invocation can be resumed",
    }
    assert commands.resumed == []


def test_resume_that_kafka_does_not_acknowledge_is_503_with_retry_after() -> None:
    failing = CommandLog(RetryableError("not acknowledged", retry_after_ms=1_000))

    response = client([in_status(InvocationStatus.PAUSED, "inv-8")], commands=failing).post(
        "/invocations/inv-8/resume", headers=AUTH
    )

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["type"] == "unavailable"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}]
)
def test_resume_needs_an_accepted_token(headers: dict[str, str]) -> None:
    commands = CommandLog()

    response = client([in_status(InvocationStatus.PAUSED, "inv-9")], commands=commands).post(
        "/invocations/inv-9/resume", headers=headers
    )

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer <token>" in response.json()["error"]["message"]
    assert commands.resumed == []


def test_get_of_the_resume_path_is_not_a_resume() -> None:
    # GET takes the whole rest of the path as the id, so this looks up "inv-10/resume".
    commands = CommandLog()
    api = client([in_status(InvocationStatus.PAUSED, "inv-10")], commands=commands)

    response = api.get("/invocations/inv-10/resume", headers=AUTH)

    assert response.status_code == 404
    assert "'inv-10/resume'" in response.json()["error"]["message"]
    assert commands.resumed == []


def test_services_list_handlers_with_retry_policies() -> None:
    response = client(services=[billing_service()]).get("/services", headers=AUTH)

    assert response.status_code == 200
    (billing,) = response.json()["services"]
    assert billing["name"] == "Billing"
    assert billing["keyed"] is False
    charge, refund = billing["handlers"]
    assert charge == {
        "name": "charge",
        "retry": {
            "max_attempts": 3,
            "initial_interval_ms": 100,
            "max_interval_ms": 30_000,
            "multiplier": 2.0,
            "on_exhausted": "pause",
        },
    }
    assert refund["retry"]["on_exhausted"] == "fail"


def test_one_service_and_unknown_service() -> None:
    api = client(services=[billing_service()])

    found = api.get("/services/Billing", headers=AUTH)
    missing = api.get("/services/Shipping", headers=AUTH)

    assert found.status_code == 200
    assert [h["name"] for h in found.json()["handlers"]] == ["charge", "refund"]
    assert missing.status_code == 404
    assert "GET /services" in missing.json()["error"]["message"]


def test_bad_path_parameter_is_422_with_the_field_path() -> None:
    response = client().get(f"/services/{'S' * 200}", headers=AUTH)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert error["fields"][0]["path"] == "path.name"
    assert "path.name" in error["message"]


def test_unknown_route_is_404_in_the_error_shape() -> None:
    response = client().get("/nope", headers=AUTH)

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    assert "/docs" in response.json()["error"]["message"]


def test_openapi_documents_every_route_with_a_summary() -> None:
    schema = client().get("/openapi.json").json()

    assert schema["info"]["title"] == "pipeline Admin API"
    assert schema["info"]["version"]
    assert schema["info"]["description"]
    paths = schema["paths"]
    assert set(paths) == {
        "/health",
        "/invocations",
        "/invocations/{invocation_id}",
        "/invocations/{invocation_id}/resume",
        "/services",
        "/services/{name}",
        "/limits/rules",
        "/limits/rules/{rule_id}",
        "/queues",
        "/queues/{scope}/{limit_key}",
        "/deployments",
        "/deployments/{name}/limits",
    }
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
    assert "security" not in paths["/health"]["get"]
    assert paths["/services"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "401" in paths["/services"]["get"]["responses"]
    resume = paths["/invocations/{invocation_id}/resume"]["post"]
    assert resume["security"] == [{"HTTPBearer": []}]
    assert {"202", "401", "404", "409", "503"} <= set(resume["responses"])
    assert "200" not in resume["responses"]


def test_a_suspended_invocation_names_the_call_it_awaits() -> None:
    request = InvocationRequest("parent", Target("Billing", "charge"), b"{}", 1)
    suspended = Invocation(
        request,
        InvocationStatus.SUSPENDED,
        attempt=1,
        journal=(
            JournalEntry(0, EntryKind.RUN, "reserve", value=b"ok"),
            JournalEntry(1, EntryKind.CALL, "Pricing/quote"),
        ),
        awaiting_call=1,
    )
    body = client([suspended]).get("/invocations/parent", headers=AUTH).json()
    assert body["status"] == "suspended"
    assert body["awaiting_call"] == {
        "entry_index": 1,
        "callee_id": "parent:send:1",
        "target": "Pricing/quote",
    }
    assert (
        client([failed_after_retries()])
        .get(f"/invocations/{failed_after_retries().id}", headers=AUTH)
        .json()["awaiting_call"]
        is None
    )


def test_invocations_are_listed_a_page_at_a_time_with_filters() -> None:
    def made(n: int, status: InvocationStatus) -> Invocation:
        request = InvocationRequest(
            id=f"inv-{n:03d}",
            target=Target("Billing" if n % 2 else "Greeter", "run"),
            input=b"{}",
            created_at_ms=1_700_000_000_000,
            scope="tenant-a" if n % 3 == 0 else None,
            limit_key="u" if n % 3 == 0 else None,
        )
        return Invocation(request=request, status=status, queue_seq=n)

    everyone = [
        made(n, InvocationStatus.COMPLETED if n < 30 else InvocationStatus.PENDING)
        for n in range(40)
    ]
    api = client(everyone)

    first = api.get("/invocations", params={"limit": 25}, headers=AUTH).json()
    second = api.get(
        "/invocations", params={"limit": 25, "cursor": first["next_cursor"]}, headers=AUTH
    ).json()
    assert [i["id"] for i in first["invocations"] + second["invocations"]] == [
        i.id for i in everyone
    ]
    assert second["next_cursor"] is None
    assert first["invocations"][0]["path"] == "/invocations/inv-000"

    filtered = api.get(
        "/invocations",
        params={"status": "pending", "service": "Billing", "scope": "~"},
        headers=AUTH,
    ).json()
    assert [i["id"] for i in filtered["invocations"]] == [
        f"inv-{n:03d}" for n in range(30, 40) if n % 2 and n % 3
    ]


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"status": "done"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"cursor": "%%%"}, "cursor"),
    ],
)
def test_a_bad_list_query_is_422_naming_the_parameter(
    params: dict[str, object], names: str
) -> None:
    response = client().get("/invocations", params=params, headers=AUTH)

    assert response.status_code == 422, response.text
    assert names in response.text
