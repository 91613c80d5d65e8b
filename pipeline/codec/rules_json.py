"""Limit rules as JSON, for the CLI: the same fields as the Admin API's `/limits/rules`.

    {"rules": [{"id": str, "pattern": str,                       required
                "concurrency": int, "rate": number, "burst": int, "weight": int,
                "max_queued": int, "hold_while_suspended": bool, "paused": bool}],
     "if_version": int}                                           optional

The Admin API parses the same document with pydantic at its edge; the CLI, inside
`pipeline`, reads it here by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.codec.json_ingress import json_type
from pipeline.core.limits import LimitRule, RulePattern, RuleSet
from pipeline.errors import ValidationError

_RULE_FIELDS = frozenset(
    {
        "id",
        "pattern",
        "concurrency",
        "rate",
        "burst",
        "weight",
        "max_queued",
        "hold_while_suspended",
        "paused",
    }
)
_BATCH_FIELDS = frozenset({"rules", "if_version"})


@dataclass(frozen=True, slots=True)
class RuleBatch:
    rules: tuple[LimitRule, ...]
    if_version: int | None = None


def parse_batch(text: str) -> RuleBatch:
    """The rules and version precondition in a JSON document; `ValidationError` says where."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"limit rules are not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValidationError(
            f'limit rules must be a JSON object {{"rules": [...]}}, not {json_type(document)}'
        )
    _refuse_unknown(document, _BATCH_FIELDS, "the document")
    rules = document.get("rules")
    if not isinstance(rules, list):
        raise ValidationError(f'"rules" must be an array of rules, not {json_type(rules)}')
    return RuleBatch(
        rules=tuple(_rule(item, f"rules[{i}]") for i, item in enumerate(rules)),
        if_version=_integer(document, "if_version", ""),
    )


def ruleset_to_json(ruleset: RuleSet) -> dict[str, Any]:
    """The rule set as the Admin API's GET /limits/rules shows it."""
    return {
        "version": ruleset.version,
        "rules": [
            {
                "id": rule.id,
                "pattern": str(rule.pattern),
                "concurrency": rule.concurrency,
                "rate": rule.rate_per_s,
                "burst": rule.burst,
                "weight": rule.weight,
                "max_queued": rule.max_queued,
                "hold_while_suspended": rule.hold_while_suspended,
                "paused": rule.paused,
            }
            for rule in ruleset.rules
        ],
    }


def _rule(item: object, where: str) -> LimitRule:
    if not isinstance(item, dict):
        raise ValidationError(f"{where} must be an object, not {json_type(item)}")
    _refuse_unknown(item, _RULE_FIELDS, where)
    rule_id = item.get("id")
    pattern = item.get("pattern")
    if not isinstance(rule_id, str):
        raise ValidationError(f"{where}.id must be a string, not {json_type(rule_id)}")
    if not isinstance(pattern, str):
        raise ValidationError(f"{where}.pattern must be a string, not {json_type(pattern)}")
    burst = _integer(item, "burst", where)
    weight = _integer(item, "weight", where)
    return LimitRule(
        id=rule_id,
        pattern=RulePattern.parse(pattern),
        concurrency=_integer(item, "concurrency", where),
        rate_per_s=_number(item, "rate", where),
        burst=1 if burst is None else burst,
        weight=1 if weight is None else weight,
        max_queued=_integer(item, "max_queued", where),
        hold_while_suspended=_flag(item, "hold_while_suspended", where),
        paused=_flag(item, "paused", where),
    )


# bool is an int in Python, never in JSON: each check below refuses it as a number.


def _integer(document: dict[str, Any], name: str, where: str) -> int | None:
    value = document.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValidationError(f"{_field(where, name)} must be an integer, not {json_type(value)}")


def _number(document: dict[str, Any], name: str, where: str) -> float | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValidationError(f"{_field(where, name)} must be a number, not {json_type(value)}")


def _flag(document: dict[str, Any], name: str, where: str) -> bool:
    value = document.get(name, False)
    if isinstance(value, bool):
        return value
    raise ValidationError(f"{_field(where, name)} must be true or false, not {json_type(value)}")


def _field(where: str, name: str) -> str:
    return f"{where}.{name}" if where else repr(name)


def _refuse_unknown(document: dict[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(document) - known)
    if unknown:
        raise ValidationError(
            f"{where} has unknown field(s) {', '.join(unknown)}: the fields are "
            + ", ".join(sorted(known))
        )
