"""Rule sets on the wire (Avro), in the CLI's JSON, and the store that writes them."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.codec.records import LIMIT_RULES, WireCodec
from pipeline.core.limits import LimitRule, RulePattern, RuleSet
from pipeline.errors import (
    ConflictError,
    DecodeError,
    RetryableError,
    ValidationError,
)
from pipeline.operations.models import LimitRulesPut, limit_rule, parse_body
from pipeline.runtime.limit_rules import (
    RULES_KEY,
    LimitRuleStore,
    decode_record,
    newest,
)
from tests.support.limit_rules import MemoryRuleCache, RecordingWriter, memory_limit_rules
from topics import TopicCatalogue, TopicNames


@pytest.fixture(scope="module")
def codec() -> WireCodec:
    return WireCodec()


PATTERNS = st.sampled_from(["*", "acme", "acme/*", "acme/t-7", "acme/t-7/*", "acme/t-7/u-42"])
RULES = st.builds(
    LimitRule,
    id=st.text(min_size=1, max_size=12),
    pattern=PATTERNS.map(RulePattern.parse),
    concurrency=st.none() | st.integers(0, 2**31 - 1),
    rate_per_s=st.none() | st.floats(min_value=0.001, max_value=1e9),
    burst=st.integers(1, 1000),
    weight=st.integers(1, 100),
    max_queued=st.none() | st.integers(0, 2**31 - 1),
    hold_while_suspended=st.booleans(),
    paused=st.booleans(),
)
RULESETS = st.builds(
    lambda version, rules: RuleSet(version, tuple({r.id: r for r in rules}.values())),
    st.integers(0, 2**62),
    st.lists(RULES, max_size=6),
)


@given(RULESETS)
def test_ruleset_round_trip(ruleset: RuleSet) -> None:
    codec = WireCodec()
    assert codec.decode_ruleset(codec.encode_ruleset(ruleset)) == ruleset


def test_ruleset_has_its_own_schema(codec: WireCodec) -> None:
    encoded = codec.encode_ruleset(RuleSet())
    assert encoded[2:10] == codec.schemas.fingerprint(LIMIT_RULES)


def test_a_record_with_a_bad_pattern_is_a_decode_error(codec: WireCodec) -> None:
    good = codec.schemas.encode(
        LIMIT_RULES,
        {
            "version": 1,
            "rules": [
                {
                    "id": "x",
                    "pattern": "a//b",
                    "concurrency": None,
                    "rate_per_s": None,
                    "burst": 1,
                    "weight": 1,
                    "max_queued": None,
                    "hold_while_suspended": False,
                    "paused": False,
                }
            ],
        },
    )
    with pytest.raises(DecodeError, match="a//b"):
        codec.decode_ruleset(good)


def test_limits_topic_is_compacted_with_one_partition() -> None:
    names = TopicNames("p.")
    assert names.limits == "p.control.limits"
    spec = next(s for s in TopicCatalogue(names).specs() if s.name == names.limits)
    assert spec.partitions == 1
    assert spec.configs["cleanup.policy"] == "compact"


# reading records


def test_only_the_rules_key_counts_and_tombstones_are_ignored(codec: WireCodec) -> None:
    value = codec.encode_ruleset(RuleSet(1))
    assert decode_record(codec, RULES_KEY, value) == RuleSet(1)
    assert decode_record(codec, b"other", value) is None
    assert decode_record(codec, RULES_KEY, None) is None
    with pytest.raises(DecodeError):
        decode_record(codec, RULES_KEY, b"junk")


def test_only_a_greater_version_replaces_the_rules() -> None:
    two = RuleSet(2, (LimitRule("a", RulePattern.parse("*")),))
    assert newest(RuleSet(1), two) is two
    assert newest(two, RuleSet(1)) is two
    assert newest(two, RuleSet(2)) is two


# the store


def test_store_writes_the_successor_and_reads_it_at_once() -> None:
    writer = RecordingWriter()
    store = memory_limit_rules(RuleSet(1), writer=writer)
    store.write(RuleSet(2))
    assert store.ruleset() == RuleSet(2)
    assert writer.written == [RuleSet(2)]


@pytest.mark.parametrize("version", [1, 3])
def test_store_refuses_a_version_that_does_not_follow(version: int) -> None:
    writer = RecordingWriter()
    store = memory_limit_rules(RuleSet(1), writer=writer)
    with pytest.raises(ConflictError, match=f"version {version} does not follow version 1"):
        store.write(RuleSet(version))
    assert writer.written == []


def test_a_failed_write_is_not_shown() -> None:
    cache = MemoryRuleCache(RuleSet(1))
    store = LimitRuleStore(cache, RecordingWriter(RetryableError("not acknowledged")))
    with pytest.raises(RetryableError):
        store.write(RuleSet(2))
    assert cache.ruleset() == RuleSet(1)


# the CLI reads a rule file with the Admin API's own model


def test_a_rule_file_is_read_as_the_admin_api_reads_a_body() -> None:
    text = json.dumps(
        {
            "rules": [
                {"id": "a", "pattern": "acme/*", "concurrency": 2, "rate": 5, "burst": 3.0},
                {"id": "b", "pattern": "*", "paused": True, "hold_while_suspended": True},
            ],
            "if_version": 4,
        }
    )
    body = parse_body(LimitRulesPut, text, "the rules in rules.json")

    assert body.if_version == 4
    assert [limit_rule(rule) for rule in body.rules] == [
        LimitRule("a", RulePattern.parse("acme/*"), concurrency=2, rate_per_s=5.0, burst=3),
        LimitRule("b", RulePattern.parse("*"), paused=True, hold_while_suspended=True),
    ]


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ("[", "body"),
        ("[]", "body"),
        ('{"rules": {}}', "rules"),
        ('{"rules": [{"id": "a", "pattern": "*"}], "version": 1}', "version"),
        ('{"rules": [1]}', "rules.0"),
        ('{"rules": [{"pattern": "*"}]}', "rules.0.id"),
        ('{"rules": [{"id": "a", "pattern": "*", "burst": true}]}', "rules.0.burst"),
        ('{"rules": [{"id": "a", "pattern": "*", "rate": "5"}]}', "rules.0.rate"),
        ('{"rules": [{"id": "a", "pattern": "*", "paused": 1}]}', "rules.0.paused"),
        ('{"rules": [{"id": "a", "pattern": "*"}], "if_version": "3"}', "if_version"),
    ],
)
def test_a_bad_rule_file_names_the_field_to_fix(document: str, where: str) -> None:
    with pytest.raises(ValidationError, match=rf"rules.json: not valid.*{re.escape(where)}"):
        parse_body(LimitRulesPut, document, "the rules in rules.json")
