"""Limit rule patterns, the most specific rule, and GCRA's bound on starts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.limits import (
    LimitRule,
    RateState,
    RulePattern,
    gcra_next_start_ms,
    gcra_started,
    governing_rule,
    scope_rule,
    scopes_affected,
)
from pipeline.core.model import QueueId
from pipeline.errors import ValidationError

PATTERNS = ["*", "acme", "acme/*", "acme/team-7", "acme/team-7/*", "acme/team-7/user-42"]
QUEUE_PATTERNS = [p for p in PATTERNS if p != "acme"]


@pytest.mark.parametrize("text", PATTERNS)
def test_patterns_round_trip(text: str) -> None:
    assert str(RulePattern.parse(text)) == text


@pytest.mark.parametrize("text", ["", "acme/", "/x", "a/b/c/d", "acme/*/x", "bad scope"])
def test_bad_patterns_name_the_pattern(text: str) -> None:
    with pytest.raises(ValidationError, match=r"pattern|scope|limit key"):
        RulePattern.parse(text)


@pytest.mark.parametrize(
    ("queue", "winner"),
    [
        (QueueId("acme", "team-7/user-42"), "acme/team-7/user-42"),
        (QueueId("acme", "team-7/user-1"), "acme/team-7/*"),
        (QueueId("acme", "team-7"), "acme/team-7"),
        (QueueId("acme", "team-8"), "acme/*"),
        (QueueId("other", "x"), "*"),
    ],
)
def test_the_most_specific_rule_governs(queue: QueueId, winner: str) -> None:
    rules = [
        LimitRule(f"r{i}", RulePattern.parse(p), concurrency=i)
        for i, p in enumerate(QUEUE_PATTERNS)
    ]
    rule = governing_rule(rules, queue)
    assert rule is not None and str(rule.pattern) == winner


def test_a_bare_scope_is_a_shared_budget_and_governs_no_queue_on_its_own() -> None:
    budget = LimitRule("s", RulePattern.parse("acme"), concurrency=5)
    star = LimitRule("t", RulePattern.parse("acme/*"))
    queue = QueueId("acme", "Greeter")
    assert governing_rule([budget], queue) is None
    assert governing_rule([star, budget], queue) is star
    assert scope_rule([star, budget], "acme") is budget


@given(
    rate=st.floats(0.5, 500),
    burst=st.integers(1, 20),
    arrivals=st.lists(st.integers(0, 2_000), min_size=1, max_size=200),
    window=st.integers(1, 5_000),
)
def test_gcra_starts_in_any_window_at_most_rate_times_t_plus_burst(
    rate: float, burst: int, arrivals: list[int], window: int
) -> None:
    """Start every request as early as GCRA allows; count starts in every window."""
    state, now, starts = RateState(), 0, []
    for gap in arrivals:
        now += gap
        at = gcra_next_start_ms(state, rate, burst, now)
        assert at >= now
        state = gcra_started(state, rate, int(at) if at == int(at) else int(at) + 1)
        starts.append(int(at) if at == int(at) else int(at) + 1)
    for i, first in enumerate(starts):
        in_window = sum(1 for s in starts[i:] if s < first + window)
        assert in_window <= rate * window / 1000 + burst


RULE_SETS = st.lists(
    st.builds(
        LimitRule,
        id=st.sampled_from(["r1", "r2", "r3"]),
        pattern=st.sampled_from([*PATTERNS, "other/*", "other"]).map(RulePattern.parse),
        concurrency=st.none() | st.integers(0, 3),
        paused=st.booleans(),
    ),
    max_size=4,
).map(lambda rules: tuple({rule.id: rule for rule in rules}.values()))
QUEUES = st.builds(
    QueueId,
    st.sampled_from(["acme", "other", "third"]),
    st.sampled_from(["team-7", "team-7/user-42", "team-8", "x"]),
)


@given(RULE_SETS, RULE_SETS, st.lists(QUEUES, max_size=10))
def test_a_rule_change_wakes_every_scope_whose_queues_it_may_govern_differently(
    old: tuple[LimitRule, ...], new: tuple[LimitRule, ...], queues: list[QueueId]
) -> None:
    affected = scopes_affected(old, new)
    for queue in queues:
        differs = governing_rule(old, queue) != governing_rule(new, queue) or scope_rule(
            old, queue.scope
        ) != scope_rule(new, queue.scope)
        if differs:
            assert affected is None or queue.scope in affected
