"""Why a queue or an invocation waits: the pure reports over scheduler state."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.core.admission import Blocked, Blocker, LimitLevel
from pipeline.core.fair_share import ScopeLoad
from pipeline.core.introspection import (
    QueueReport,
    awaiting_report,
    explain,
    parse_queue_address,
    queue_address,
    queue_report,
    waiting_report,
)
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.limits import LimitRule, RulePattern
from pipeline.core.model import InvocationRequest, QueueId, Target
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.errors import ValidationError

NOW = 1_000_000
QUEUE = QueueId("acme", "k")


def rule(pattern: str = "acme/*", rule_id: str = "r", **limits: object) -> LimitRule:
    return LimitRule(rule_id, RulePattern.parse(pattern), **limits)  # type: ignore[arg-type]


def pending(
    invocation_id: str,
    seq: int,
    priority: int = 5,
    key: str = "k",
    status: InvocationStatus = InvocationStatus.PENDING,
) -> Invocation:
    request = InvocationRequest(
        invocation_id, Target("S", "h"), b"", 0, scope="acme", limit_key=key, priority=priority
    )
    return Invocation(request, status, queue_seq=seq)


def test_a_queue_without_rule_reports_no_limits_and_may_start_now() -> None:
    report = queue_report(VirtualQueue(QUEUE, queued=2, running=7), (), NOW)

    assert report == QueueReport(
        queue_id=QUEUE,
        rule_id=None,
        rule_pattern=None,
        concurrency=None,
        rate_per_s=None,
        burst=None,
        paused=False,
        max_queued=None,
        running=7,
        queued=2,
        head_blocker=None,
        blocked_until_ms=None,
        next_eligible_ms=NOW,
    )


def test_the_most_specific_rule_is_reported_with_its_pattern() -> None:
    rules = (
        rule("*", "all", concurrency=9),
        rule("acme/*", "acme", concurrency=1, max_queued=10),
        rule("other/*", "other", concurrency=3),
    )
    report = queue_report(VirtualQueue(QUEUE, queued=1, running=1), rules, NOW)

    assert (report.rule_id, report.rule_pattern, report.concurrency, report.max_queued) == (
        "acme",
        "acme/*",
        1,
        10,
    )
    assert report.head_blocker is Blocker.CONCURRENCY
    assert report.blocked_until_ms is None
    assert report.next_eligible_ms is None  # waits for a running one to end


def test_a_paused_rule_blocks_until_changed() -> None:
    report = queue_report(VirtualQueue(QUEUE, queued=1), [rule(paused=True)], NOW)

    assert (report.paused, report.head_blocker, report.next_eligible_ms) == (
        True,
        Blocker.PAUSED,
        None,
    )


def test_rate_blocks_until_the_next_conforming_start() -> None:
    # 10/s, burst 1: the last start spent the budget until NOW + 100.
    queue = VirtualQueue(QUEUE, queued=3, rate_tat_ms=NOW + 100.0)
    report = queue_report(queue, [rule(rate_per_s=10.0)], NOW)

    assert report.head_blocker is Blocker.RATE
    assert report.blocked_until_ms == NOW + 100
    assert report.next_eligible_ms == NOW + 100
    assert report.rate_per_s == 10.0
    assert report.burst == 1


def test_a_hold_that_ends_before_the_rate_allows_reports_the_later_instant() -> None:
    queue = VirtualQueue(QUEUE, queued=1, rate_tat_ms=NOW + 500.0, paused_until_ms=NOW + 200)
    report = queue_report(queue, [rule(rate_per_s=10.0)], NOW)

    assert report.head_blocker is Blocker.PAUSED_UNTIL
    assert report.blocked_until_ms == NOW + 200
    assert report.next_eligible_ms == NOW + 500


def test_a_hold_that_ends_into_full_concurrency_has_no_eligible_instant() -> None:
    queue = VirtualQueue(QUEUE, queued=1, running=1, paused_until_ms=NOW + 200)
    report = queue_report(queue, [rule(concurrency=1)], NOW)

    assert report.head_blocker is Blocker.PAUSED_UNTIL
    assert report.next_eligible_ms is None


def test_nothing_queued_means_no_head_and_no_blocker() -> None:
    report = queue_report(VirtualQueue(QUEUE, running=1), [rule(concurrency=1)], NOW)

    assert (report.head_blocker, report.blocked_until_ms, report.next_eligible_ms) == (
        None,
        None,
        None,
    )


def test_rate_blocker_of_the_head_is_shown_with_its_instant() -> None:
    queue = VirtualQueue(QUEUE, queued=1, rate_tat_ms=NOW + 250.0)
    report = waiting_report(pending("a", 0), 0, queue, [rule(rate_per_s=4.0)], NOW)

    assert (report.blocker, report.blocked_until_ms) == (Blocker.RATE, NOW + 250)


def test_an_unread_queue_state_counts_as_an_empty_queue() -> None:
    report = waiting_report(pending("a", 0), 0, None, [rule(concurrency=0)], NOW)

    assert (report.position, report.blocker) == (1, Blocker.CONCURRENCY)


def test_a_non_pending_invocation_has_no_waiting_report() -> None:
    with pytest.raises(ValidationError, match="not pending"):
        waiting_report(pending("a", 0, status=InvocationStatus.RUNNING), 0, None, (), NOW)


@pytest.mark.parametrize(
    ("queue_id", "address"),
    [
        (QueueId("acme", "user-9"), "acme/user-9"),
        (QueueId("acme", "user-9/agent-2"), "acme/user-9/agent-2"),
        (QueueId.service_default("Greeter"), "~/Greeter"),
    ],
)
def test_queue_addresses_round_trip_with_tilde_for_the_empty_scope(
    queue_id: QueueId, address: str
) -> None:
    assert queue_address(queue_id) == address
    scope, _, limit_key = address.partition("/")
    assert parse_queue_address(scope, limit_key) == queue_id


def test_an_address_without_limit_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="has no limit key"):
        parse_queue_address("acme", "")


def test_explanations_name_the_rule_that_blocks() -> None:
    queue = VirtualQueue(QUEUE, queued=1, running=2)
    full = queue_report(queue, [rule(rule_id="per-user", concurrency=2)], NOW)
    paused = queue_report(queue, [rule(paused=True)], NOW)
    free = queue_report(queue, (), NOW)

    assert explain(full) == (
        "2 running, the concurrency limit of rule 'per-user' (acme/*) is 2: "
        "the head starts when one ends"
    )
    assert "rule 'r' (acme/*) is paused" in explain(paused)
    assert explain(free).startswith("the head may start now")
    assert (
        explain(queue_report(VirtualQueue(QUEUE, running=2), (), NOW)) == "nothing waits; 2 running"
    )


def test_slots_held_by_invocations_awaiting_their_deployment_block_the_head_there() -> None:
    full = VirtualQueue(QUEUE, queued=3, running=2, awaiting_capacity=1)
    report = queue_report(full, [rule(concurrency=2)], NOW)
    assert report.head_blocker is Blocker.DEPLOYMENT_CAPACITY
    assert report.head_blocker_level is LimitLevel.DEPLOYMENT
    assert report.next_eligible_ms is None and report.awaiting_capacity == 1
    assert "cap of the deployment" in explain(report)
    # Nothing queued, but admitted invocations wait for the cap: that is the head.
    admitted = VirtualQueue(QUEUE, running=4, awaiting_capacity=4)
    assert queue_report(admitted, [], NOW).head_blocker is Blocker.DEPLOYMENT_CAPACITY
    # Slots held by running attempts only: plain concurrency.
    busy = VirtualQueue(QUEUE, queued=1, running=2)
    assert queue_report(busy, [rule(concurrency=2)], NOW).head_blocker is Blocker.CONCURRENCY


def test_an_awaiting_report_names_the_deployment_and_only_fits_awaiting_invocations() -> None:
    me = replace(
        pending("me", 0),
        status=InvocationStatus.AWAITING_CAPACITY,
        deployment="S",
        awaiting_since_ms=20,
    )
    report = awaiting_report(me, 2)
    assert (report.position, report.ahead) == (3, 2)
    assert report.blocker is Blocker.DEPLOYMENT_CAPACITY and report.deployment == "S"
    with pytest.raises(ValidationError, match="not awaiting deployment capacity"):
        awaiting_report(pending("p", 0), 0)


def test_a_report_restates_the_schedulers_verdict_not_one_at_its_own_clock() -> None:
    decided = Blocked(Blocker.RATE, until_ms=NOW + 50, rule_id="r", decided_at_ms=NOW - 200)
    queue = VirtualQueue(QUEUE, queued=260, running=0, rate_tat_ms=NOW - 100.0, blocked=decided)
    rules = [rule(rate_per_s=20.0, burst=5)]

    # At the reader's clock the rate looks spent long ago, so a recomputation says "start".
    report = queue_report(queue, rules, NOW)

    assert (report.head_blocker, report.blocked_until_ms) == (Blocker.RATE, NOW + 50)
    assert (report.next_eligible_ms, report.decided_at_ms) == (NOW + 50, NOW - 200)
    waiting = waiting_report(pending("a", 0), 3, queue, rules, NOW)
    assert (waiting.blocker, waiting.rule_id) == (Blocker.RATE, "r")


def test_a_scope_budget_verdict_holds_every_queue_of_the_scope() -> None:
    budget = Blocked(Blocker.CONCURRENCY, rule_id="acme", level=LimitLevel.SCOPE, decided_at_ms=1)
    load = ScopeLoad("acme", running=4, queued=9, blocked=budget)
    rules = [rule("acme", "acme", concurrency=4)]

    report = queue_report(VirtualQueue(QUEUE, queued=9), rules, NOW, load)

    assert (report.head_blocker, report.head_blocker_level) == (
        Blocker.CONCURRENCY,
        LimitLevel.SCOPE,
    )
