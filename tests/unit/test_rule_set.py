"""Rule sets as operators change them: batch upserts, deletes, version preconditions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.limits import LimitRule, RulePattern, RuleSet, delete, put
from pipeline.errors import ConflictError, NotFoundError, PipelineError, ValidationError


def rule(rule_id: str, pattern: str = "*", **limits: object) -> LimitRule:
    return LimitRule(rule_id, RulePattern.parse(pattern), **limits)  # type: ignore[arg-type]


def test_an_empty_rule_set_is_version_zero() -> None:
    assert RuleSet() == RuleSet(0, ())


def test_duplicate_ids_are_refused_naming_the_id() -> None:
    with pytest.raises(ValidationError, match="rule id 'a' appears more than once"):
        RuleSet(1, (rule("a"), rule("b"), rule("a", "acme")))


def test_negative_version_is_refused() -> None:
    with pytest.raises(ValidationError, match="version -1"):
        RuleSet(-1)


def test_put_adds_and_replaces_by_id_in_one_version() -> None:
    first = put(RuleSet(), [rule("b", concurrency=2), rule("a", "acme")], expected_version=None)
    assert first.version == 1
    assert [r.id for r in first.rules] == ["a", "b"]

    second = put(first, [rule("b", concurrency=5), rule("c", "acme/*")], expected_version=1)
    assert second.version == 2
    assert [r.id for r in second.rules] == ["a", "b", "c"]
    assert second.rule("b") == rule("b", concurrency=5)
    assert first.rule("b") == rule("b", concurrency=2)


def test_rules_are_ordered_by_id_whatever_the_order_of_changes() -> None:
    one = put(put(RuleSet(), [rule("a")], None), [rule("b")], None)
    other = put(put(RuleSet(), [rule("b")], None), [rule("a")], None)
    assert one == other


def test_version_mismatch_is_a_conflict_naming_both_versions() -> None:
    ruleset = put(RuleSet(), [rule("a")], None)
    with pytest.raises(ConflictError, match="at version 1, not the expected version 0"):
        put(ruleset, [rule("b")], expected_version=0)
    with pytest.raises(ConflictError, match="at version 1, not the expected version 7"):
        delete(ruleset, "a", expected_version=7)


def test_a_later_rule_of_a_batch_replaces_an_earlier_one_with_its_id() -> None:
    updated = put(RuleSet(), [rule("x"), rule("y"), rule("x", "acme")], None)

    assert updated.rules == (rule("x", "acme"), rule("y"))


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(ValidationError, match="no rules"):
        put(RuleSet(), [], None)


def test_delete_removes_the_rule_in_a_new_version() -> None:
    ruleset = put(RuleSet(), [rule("a"), rule("b")], None)
    after = delete(ruleset, "a", expected_version=1)
    assert after == RuleSet(2, (rule("b"),))


def test_delete_of_an_unknown_id_is_not_found_and_lists_the_ids() -> None:
    ruleset = put(RuleSet(), [rule("a")], None)
    with pytest.raises(NotFoundError, match=r"limit rule 'zz' does not exist.*'a'"):
        delete(ruleset, "zz", None)


# Any sequence of operations, some of which fail.

IDS = st.sampled_from(["a", "b", "c", "d"])
PATTERNS = st.sampled_from(["*", "acme", "acme/*", "acme/t", "acme/t/*", "acme/t/u"])
RULES = st.builds(
    rule, IDS, PATTERNS, concurrency=st.none() | st.integers(0, 5), weight=st.integers(1, 3)
)


@dataclass(frozen=True)
class Put:
    rules: list[LimitRule]
    expected: int | None


@dataclass(frozen=True)
class Delete:
    rule_id: str
    expected: int | None


# Expected versions near the real one, so that both matches and mismatches occur.
EXPECTED = st.none() | st.integers(0, 8)
OPERATIONS = st.lists(
    st.one_of(
        st.builds(Put, st.lists(RULES, max_size=4), EXPECTED),
        st.builds(Delete, IDS, EXPECTED),
    ),
    max_size=25,
)


@given(OPERATIONS)
def test_versions_step_by_one_ids_stay_unique_and_failures_change_nothing(
    operations: list[Put | Delete],
) -> None:
    ruleset = RuleSet()
    for operation in operations:
        before = ruleset
        try:
            if isinstance(operation, Put):
                ruleset = put(ruleset, operation.rules, operation.expected)
            else:
                ruleset = delete(ruleset, operation.rule_id, operation.expected)
        except PipelineError:
            assert ruleset is before
            assert ruleset == before
            continue
        assert ruleset.version == before.version + 1
        ids = [r.id for r in ruleset.rules]
        assert len(ids) == len(set(ids))
        assert ids == sorted(ids)
        if isinstance(operation, Put):
            # The whole batch is in force (the last rule of a repeated id), and nothing
            # else changed.
            last = {new.id: new for new in operation.rules}
            for new in last.values():
                assert ruleset.rule(new.id) == new
            untouched = {r.id for r in before.rules} - {r.id for r in operation.rules}
            assert all(ruleset.rule(i) == before.rule(i) for i in untouched)
        else:
            assert ruleset.rule(operation.rule_id) is None
            assert len(ruleset.rules) == len(before.rules) - 1


def test_a_rule_id_with_a_control_character_is_refused_as_it_comes_in() -> None:
    with pytest.raises(ValidationError, match="control character"):
        put(RuleSet(), [rule("tab\there")], None)
