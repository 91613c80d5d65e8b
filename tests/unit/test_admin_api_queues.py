"""The Admin API's introspection routes over in-memory state: queues and `waiting`."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi.testclient import TestClient

from admin_api import create_app
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.limits import LimitRule, RulePattern, RuleSet
from pipeline.core.model import InvocationRequest, QueueId, Target
from pipeline.core.state import Invocation, VirtualQueue
from tests.support.limit_rules import memory_limit_rules
from tests.support.state_replica import replica
from tests.unit.test_admin_api import AUTH, CommandLog, ServiceTable, settings

NOW = 1_700_000_000_000
ACME = QueueId("acme", "user-9")
RULES = RuleSet(
    1,
    (
        LimitRule("acme", RulePattern.parse("acme/*"), concurrency=1, max_queued=50),
        LimitRule("slow", RulePattern.parse("slow/*"), rate_per_s=2.0, burst=1),
    ),
)


def client(
    invocations: Iterable[Invocation] = (), queues: Iterable[VirtualQueue] = ()
) -> TestClient:
    app = create_app(
        settings(),
        invocations=replica(invocations, queues),
        services=ServiceTable(),
        commands=CommandLog(),
        limits=memory_limit_rules(RULES),
        clock=lambda: NOW,
    )
    return TestClient(app, headers=AUTH)


def invocation(
    invocation_id: str,
    seq: int,
    status: InvocationStatus = InvocationStatus.PENDING,
    scope: str | None = "acme",
    limit_key: str | None = "user-9",
) -> Invocation:
    request = InvocationRequest(
        invocation_id, Target("Billing", "charge"), b"", NOW, scope=scope, limit_key=limit_key
    )
    return Invocation(request, status, queue_seq=seq)


QUEUES = (
    VirtualQueue(ACME, queued=2, running=1),
    VirtualQueue(QueueId("slow", "k"), queued=1, rate_tat_ms=NOW + 400.0),
    VirtualQueue(QueueId.service_default("Billing"), running=3),
    VirtualQueue(QueueId("acme", "user-1/agent-2"), running=1),
)


def test_queues_are_listed_by_scope_then_limit_key_with_their_rule() -> None:
    response = client(queues=QUEUES).get("/queues")

    assert response.status_code == 200
    listed = response.json()["queues"]
    assert [q["queue_id"] for q in listed] == [
        "/Billing",
        "acme/user-1/agent-2",
        "acme/user-9",
        "slow/k",
    ]
    assert listed[0] == {
        "queue_id": "/Billing",
        "scope": None,
        "limit_key": "Billing",
        "path": "/queues/~/Billing",
        "queued": 0,
        "running": 3,
        "rule_pattern": None,
    }
    assert listed[2]["rule_pattern"] == "acme/*"
    assert (listed[2]["queued"], listed[2]["running"]) == (2, 1)


def test_the_scope_filter_keeps_one_scope_and_tilde_means_default_queues() -> None:
    api = client(queues=QUEUES)

    acme = api.get("/queues", params={"scope": "acme"}).json()["queues"]
    defaults = api.get("/queues", params={"scope": "~"}).json()["queues"]
    nothing = api.get("/queues", params={"scope": "nobody"}).json()["queues"]

    assert [q["limit_key"] for q in acme] == ["user-1/agent-2", "user-9"]
    assert [q["queue_id"] for q in defaults] == ["/Billing"]
    assert nothing == []


def test_a_queue_shows_its_rule_counts_and_the_concurrency_blocker() -> None:
    response = client(queues=QUEUES).get("/queues/acme/user-9")

    assert response.status_code == 200
    body = response.json()
    assert body["queue_id"] == "acme/user-9"
    assert body["rule"] == {
        "id": "acme",
        "pattern": "acme/*",
        "concurrency": 1,
        "rate": None,
        "burst": 1,
        "paused": False,
        "max_queued": 50,
    }
    assert (body["running"], body["queued"], body["head_blocker"]) == (1, 2, "concurrency")
    assert body["blocked_until"] is None
    assert body["next_eligible"] is None
    assert "concurrency limit of rule 'acme' (acme/*) is 1" in body["explanation"]


def test_a_rate_limited_queue_says_until_when() -> None:
    body = client(queues=QUEUES).get("/queues/slow/k").json()

    assert body["head_blocker"] == "rate"
    assert body["blocked_until"] == "2023-11-14T22:13:20.400000Z"
    assert body["next_eligible"] == body["blocked_until"]


def test_a_two_level_limit_key_and_a_default_queue_are_addressable() -> None:
    api = client(queues=QUEUES)

    two_level = api.get("/queues/acme/user-1/agent-2")
    default = api.get("/queues/~/Billing")

    assert two_level.json()["limit_key"] == "user-1/agent-2"
    assert default.status_code == 200
    assert (default.json()["scope"], default.json()["rule"]) == (None, None)


def test_an_idle_queue_is_404_and_says_idle_queues_leave_no_state() -> None:
    response = client(queues=QUEUES).get("/queues/acme/user-404")

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "not_found"
    assert "no invocation waits or runs in queue 'acme/user-404'" in error["message"]
    assert "idle queue leaves no state" in error["message"]
    assert "GET /queues" in error["message"]


def test_a_pending_invocation_shows_its_place_in_the_queue() -> None:
    everyone = [
        invocation("head", 0),
        invocation("last", 1),
        invocation("runner", -1, status=InvocationStatus.RUNNING),
    ]
    body = client(everyone, QUEUES).get("/invocations/last").json()

    assert body["waiting"] == {
        "queue_id": "acme/user-9",
        "queue_path": "/queues/acme/user-9",
        "position": 2,
        "ahead": 1,
        "blocker": "concurrency",
        "blocker_rule_id": "acme",
        "blocker_level": "queue",
        "deployment": None,
        "blocked_until": None,
    }


def test_a_queue_held_by_its_scope_budget_says_so() -> None:
    rules = RuleSet(
        1,
        (
            LimitRule("team", RulePattern.parse("team"), concurrency=2),
            LimitRule("team-keys", RulePattern.parse("team/*"), concurrency=5),
        ),
    )
    queues = (
        VirtualQueue(QueueId("team", "a"), running=2),
        VirtualQueue(QueueId("team", "b"), queued=3),
    )
    app = create_app(
        settings(),
        invocations=replica((), queues),
        services=ServiceTable(),
        commands=CommandLog(),
        limits=memory_limit_rules(rules),
        clock=lambda: NOW,
    )
    body = TestClient(app, headers=AUTH).get("/queues/team/b").json()

    assert body["rule"]["id"] == "team-keys"
    assert (body["head_blocker"], body["head_blocker_level"]) == ("concurrency", "scope")
    assert body["scope_budget"] == {
        "rule_id": "team",
        "concurrency": 2,
        "rate": None,
        "burst": 1,
        "paused": False,
        "running": 2,
        "queued": 3,
    }
    assert "2 running in the whole scope" in body["explanation"]


def test_a_running_invocation_has_no_waiting() -> None:
    runner = invocation("runner", 0, status=InvocationStatus.RUNNING)

    assert client([runner], QUEUES).get("/invocations/runner").json()["waiting"] is None


def test_a_pending_invocation_in_a_default_queue_points_at_the_tilde_path() -> None:
    pending = invocation("p", 0, scope=None, limit_key=None)
    waiting = client([pending]).get("/invocations/p").json()["waiting"]

    assert waiting["queue_path"] == "/queues/~/Billing"
    assert (waiting["position"], waiting["blocker"]) == (1, None)
