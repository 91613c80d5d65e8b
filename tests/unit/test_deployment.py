"""Deployment caps counted on the home partition, without a broker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.deployment import (
    DeploymentLimit,
    DeploymentLoad,
    Grant,
    demanded,
    granted,
    released,
)
from pipeline.core.limits import (
    RuleSet,
    delete_deployment_limit,
    put_deployment_limit,
)
from pipeline.errors import ConflictError, NotFoundError, ValidationError


def cap(n: int) -> DeploymentLimit:
    return DeploymentLimit("Greeter", n)


def test_grants_up_to_the_cap_and_keeps_the_rest_asked_for() -> None:
    load = demanded(DeploymentLoad("Greeter"), 3, 5)
    load, grants = granted(load, cap(2))
    assert grants == (Grant(3, 2),)
    assert load.running == 2 and load.demand == ((3, 3),)
    load, grants = granted(load, cap(2))
    assert grants == ()
    load, grants = granted(released(load, 1), cap(2))
    assert grants == (Grant(3, 1),) and load.running == 2 and load.waiting == 2


def test_partitions_take_turns() -> None:
    load = demanded(demanded(DeploymentLoad("Greeter"), 0, 10), 1, 10)
    load, grants = granted(load, cap(3))
    assert grants == (Grant(0, 2), Grant(1, 1))
    # Units went to 0, 1, 0: the next is 1's, the one after 0's.
    load, grants = granted(released(load, 1), cap(3))
    assert grants == (Grant(1, 1),)
    load, grants = granted(released(load, 1), cap(3))
    assert grants == (Grant(0, 1),)


def test_without_a_cap_everything_asked_for_is_granted() -> None:
    load = demanded(demanded(DeploymentLoad("Greeter"), 0, 4), 2, 1)
    load, grants = granted(load, None)
    assert grants == (Grant(0, 4), Grant(2, 1)) and load.running == 5 and not load.demand


def test_a_lowered_cap_grants_nothing_until_enough_came_back() -> None:
    load, _ = granted(demanded(DeploymentLoad("Greeter"), 0, 10), cap(5))
    load = demanded(load, 1, 1)
    for _ in range(3):
        load, grants = granted(released(load, 1), cap(2))
        assert grants == () or load.running <= 2
    assert load.running == 2
    load, grants = granted(released(load, 1), cap(2))
    assert sum(g.count for g in grants) == 1


def test_a_cap_is_a_valid_name_and_not_negative() -> None:
    with pytest.raises(ValidationError, match="concurrency -1 must be >= 0"):
        DeploymentLimit("Greeter", -1)
    with pytest.raises(ValidationError, match="'bad name' is not a service name"):
        DeploymentLimit("bad name", 1)


def test_caps_are_set_and_removed_as_new_versions_of_the_rule_set() -> None:
    ruleset = put_deployment_limit(RuleSet(), cap(3), expected_version=0)
    assert ruleset.version == 1 and ruleset.deployment_limit("Greeter") == cap(3)
    ruleset = put_deployment_limit(ruleset, cap(5), expected_version=None)
    assert ruleset.deployments == (cap(5),)
    with pytest.raises(ConflictError):
        delete_deployment_limit(ruleset, "Greeter", expected_version=1)
    ruleset = delete_deployment_limit(ruleset, "Greeter", expected_version=2)
    assert ruleset.deployments == () and ruleset.version == 3
    with pytest.raises(NotFoundError, match="'Greeter' has no limit"):
        delete_deployment_limit(ruleset, "Greeter", expected_version=None)


# A step: a partition asks for units, units come back, or the cap changes.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("demand"), st.integers(0, 5), st.integers(1, 4)),
        st.tuples(st.just("release"), st.integers(0, 0), st.integers(1, 3)),
        st.tuples(st.just("cap"), st.integers(0, 0), st.integers(0, 6)),
    ),
    max_size=80,
)


@given(steps)
def test_units_out_never_exceed_the_cap_and_none_is_lost(ops: list[tuple[str, int, int]]) -> None:
    load = DeploymentLoad("Greeter")
    limit = cap(3)
    asked = given_out = returned = 0
    wanted: dict[int, int] = {}
    for kind, partition, count in ops:
        if kind == "demand":
            load = demanded(load, partition, count)
            asked += count
            wanted[partition] = wanted.get(partition, 0) + count
        elif kind == "release":
            count = min(count, load.running)  # only granted units come back
            load = released(load, count)
            returned += count
        else:
            limit = cap(count)
        before = load.running
        load, grants = granted(load, limit)
        for grant in grants:
            assert grant.count > 0
            wanted[grant.partition] -= grant.count
            assert wanted[grant.partition] >= 0  # never more than a partition asked for
        given_out += sum(g.count for g in grants)
        if grants:
            assert load.running <= limit.concurrency
        assert load.running >= min(before, limit.concurrency) or not grants
        # Conservation: every unit is out, back, or still asked for.
        assert load.running == given_out - returned
        assert load.waiting == asked - given_out
        assert dict(load.demand) == {p: n for p, n in wanted.items() if n}
        # Work conserving: capacity left idle only when nobody asks.
        assert load.running >= limit.concurrency or not load.demand


@given(st.lists(st.integers(1, 50), min_size=2, max_size=6), st.integers(1, 4))
def test_no_asking_partition_waits_behind_more_than_a_turn_of_the_others(
    backlogs: list[int], capacity: int
) -> None:
    load = DeploymentLoad("Greeter")
    for partition, backlog in enumerate(backlogs):
        load = demanded(load, partition, backlog)
    load, _ = granted(load, cap(capacity))
    waited = dict.fromkeys(range(len(backlogs)), 0)
    while load.demand:
        load, grants = granted(released(load, 1), cap(capacity))
        served = {g.partition for g in grants}
        for partition, _ in load.demand:
            waited[partition] = 0 if partition in served else waited[partition] + 1
            assert waited[partition] < len(backlogs)
