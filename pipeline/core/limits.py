"""Limit rules: which govern a virtual queue, which budget a scope; GCRA for rates.

Two kinds of budget, checked together:

- **A queue's own rule**: the most specific pattern among those below that matches it.
  Such a rule is a template: it gives each queue it matches a budget of its own, never
  one budget shared by all of them. A `*` rule gives every queue the same limits.
- **A scope's budget**: a rule whose pattern is a bare scope (`acme`) is one budget for
  all of that scope's queues together (their total running, their total starts).
  When the scope's queues compete for it, each queue's share of the starts follows the
  `weight` of its own rule (`pipeline.core.fair_share`).

| pattern        | the queue (scope, limit key) it governs           | specificity |
|----------------|---------------------------------------------------|-------------|
| `s/L1/L2`      | exactly (s, L1/L2)                                | 6           |
| `s/L1/*`       | (s, L1/x) for any x                               | 5           |
| `s/L1`         | (s, L1) and (s, L1/x)                             | 4           |
| `s/*`          | (s, any limit key)                                | 3           |
| `*`            | every queue                                       | 1           |
| `s`            | none: the budget of scope s as a whole            | (2)         |

Operators change rules at runtime as a whole `RuleSet`: `put` and `delete` each return
the next version, so that a writer can say which version it read (optimistic
concurrency) and readers can drop any copy older than the one they hold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from pipeline.core.deployment import DeploymentLimit
from pipeline.core.model import MAX_AVRO_INT, QueueId, validate_limit_key, validate_scope
from pipeline.errors import ConflictError, NotFoundError, ValidationError

# Slower than one start a day, the next start time outgrows any timer a queue keeps.
MIN_RATE_PER_S = 1 / 86_400
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class RulePattern:
    scope: str | None  # None: `*`
    l1: str | None = None  # None: the whole scope; "*": any
    l2: str | None = None  # None: L1 and below; "*": any L2 under L1

    @classmethod
    def parse(cls, text: str) -> RulePattern:
        if text == "*":
            return cls(None)
        parts = text.split("/")
        if len(parts) > 3 or any(not p for p in parts):
            raise ValidationError(
                f"rule pattern {text!r} is not valid: write *, scope, scope/*, scope/L1, "
                "scope/L1/* or scope/L1/L2"
            )
        validate_scope(parts[0])
        if len(parts) == 1:
            return cls(parts[0])
        if parts[1] == "*":
            if len(parts) == 3:
                raise ValidationError(f"rule pattern {text!r}: nothing may follow scope/*")
            return cls(parts[0], "*")
        validate_limit_key(parts[1])
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        if parts[2] != "*":
            validate_limit_key(parts[2])
        return cls(parts[0], parts[1], parts[2])

    def __str__(self) -> str:
        return "/".join(
            p for p in ("*" if self.scope is None else self.scope, self.l1, self.l2) if p
        )

    @property
    def specificity(self) -> int:
        if self.scope is None:
            return 1
        if self.l1 is None:
            return 2
        if self.l1 == "*":
            return 3
        if self.l2 is None:
            return 4
        return 5 if self.l2 == "*" else 6

    @property
    def is_scope_budget(self) -> bool:
        return self.scope is not None and self.l1 is None

    def matches(self, queue: QueueId) -> bool:
        if self.scope is None:
            return True
        if queue.scope != self.scope:
            return False
        if self.l1 is None:
            return True
        l1, _, l2 = queue.limit_key.partition("/")
        if self.l1 == "*":
            return True
        if l1 != self.l1:
            return False
        if self.l2 is None:
            return True
        if self.l2 == "*":
            return bool(l2)
        return l2 == self.l2


@dataclass(frozen=True, slots=True)
class LimitRule:
    """Limits for each queue the pattern governs; None means no limit of that kind."""

    id: str
    pattern: RulePattern
    concurrency: int | None = None
    rate_per_s: float | None = None
    burst: int = 1
    weight: int = 1
    max_queued: int | None = None
    hold_while_suspended: bool = False
    paused: bool = False

    def __post_init__(self) -> None:
        if not self.id:
            raise ValidationError("rule id must not be empty")
        if self.concurrency is not None and self.concurrency < 0:
            raise ValidationError(f"rule {self.id!r}: concurrency {self.concurrency} must be >= 0")
        if self.rate_per_s is not None and not MIN_RATE_PER_S <= self.rate_per_s < math.inf:
            raise ValidationError(
                f"rule {self.id!r}: rate {self.rate_per_s}/s must be finite and at least "
                "one start a day (1/86400 = 0.0000116/s)"
            )
        if self.burst < 1:
            raise ValidationError(f"rule {self.id!r}: burst {self.burst} must be >= 1")
        if self.weight < 1:
            raise ValidationError(f"rule {self.id!r}: weight {self.weight} must be >= 1")
        if self.max_queued is not None and self.max_queued < 0:
            raise ValidationError(f"rule {self.id!r}: max_queued {self.max_queued} must be >= 0")
        for name in ("concurrency", "burst", "weight", "max_queued"):
            value = getattr(self, name)
            if value is not None and value > MAX_AVRO_INT:
                raise ValidationError(f"rule {self.id!r}: {name} {value} must be <= {MAX_AVRO_INT}")


def governing_rule(rules: Iterable[LimitRule], queue: QueueId) -> LimitRule | None:
    """The queue's own rule: the most specific matching template; among equals, the
    one with the smallest id."""
    best: LimitRule | None = None
    for rule in rules:
        if rule.pattern.is_scope_budget or not rule.pattern.matches(queue):
            continue
        if (
            best is None
            or rule.pattern.specificity > best.pattern.specificity
            or (rule.pattern.specificity == best.pattern.specificity and rule.id < best.id)
        ):
            best = rule
    return best


def scope_rule(rules: Iterable[LimitRule], scope: str) -> LimitRule | None:
    """The budget of `scope` as a whole; among several, the one with the smallest id."""
    if not scope:
        return None
    budgets = [r for r in rules if r.pattern.is_scope_budget and r.pattern.scope == scope]
    return min(budgets, key=lambda rule: rule.id, default=None)


def scopes_affected(old: Iterable[LimitRule], new: Iterable[LimitRule]) -> frozenset[str] | None:
    """The scopes whose queues may be governed differently after `old` became `new`;
    None: possibly every queue (a `*` rule changed).

    A rule change must wake the queues it may unblock; with a million queues, waking
    only the changed scopes' queues is the difference between a prefix scan and all.
    """
    changed = set(old) ^ set(new)
    if any(rule.pattern.scope is None for rule in changed):
        return None
    return frozenset(rule.pattern.scope for rule in changed if rule.pattern.scope is not None)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every limit rule in force, and how many changes made it (0: none yet).

    Rules are kept ordered by id, so that two sets with the same rules are equal
    whatever order the changes came in.
    """

    version: int = 0
    rules: tuple[LimitRule, ...] = ()
    # Worker-pool caps, ordered by deployment; a separate kind of limit that shares
    # the record so that every limit change is versioned the same way.
    deployments: tuple[DeploymentLimit, ...] = ()

    def __post_init__(self) -> None:
        if self.version < 0:
            raise ValidationError(f"rule set version {self.version} must be >= 0")
        _check_unique_ids(self.rules, "the rule set")
        names = [limit.deployment for limit in self.deployments]
        if len(set(names)) != len(names):
            raise ValidationError(f"deployments {names} appear more than once in the rule set")

    def rule(self, rule_id: str) -> LimitRule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)

    def deployment_limit(self, deployment: str) -> DeploymentLimit | None:
        return next((d for d in self.deployments if d.deployment == deployment), None)


def put(ruleset: RuleSet, rules: Sequence[LimitRule], expected_version: int | None) -> RuleSet:
    """The next version with `rules` added, or replacing the rules with the same ids.

    All or nothing: any error leaves `ruleset` as it is (it is immutable anyway; the
    point is that no partial batch is ever returned).
    """
    _check_version(ruleset, expected_version)
    for rule in rules:
        # Checked where rules come in, not in LimitRule: a rule set stored before scope
        # budgets existed must stay readable (its max_queued on a scope is ignored).
        control = _CONTROL.search(rule.id)
        if control is not None:
            raise ValidationError(
                f"rule id {rule.id!r} has the control character {control.group()!r}: "
                "an id is named in paths (DELETE /limits/rules/{id}), where none may be"
            )
        if rule.pattern.is_scope_budget and rule.max_queued is not None:
            raise ValidationError(
                f"rule {rule.id!r}: max_queued caps each queue's backlog, and pattern "
                f"{rule.pattern} is the scope's shared budget: put max_queued on "
                f"{rule.pattern}/* instead"
            )
    if not rules:
        raise ValidationError(
            "the batch has no rules, so it would change nothing: send at least one rule "
            "(rules are removed one by one, by id)"
        )
    # Applied in order: a rule whose id came earlier in the batch replaces it, as it
    # would in the rule set, so a batch means what the same PUTs one by one mean.
    by_id = {rule.id: rule for rule in ruleset.rules}
    by_id.update((rule.id, rule) for rule in rules)
    return replace(ruleset, version=ruleset.version + 1, rules=_ordered(by_id.values()))


def delete(ruleset: RuleSet, rule_id: str, expected_version: int | None) -> RuleSet:
    """The next version without the rule `rule_id`; `NotFoundError` if there is none."""
    _check_version(ruleset, expected_version)
    if ruleset.rule(rule_id) is None:
        known = ", ".join(repr(rule.id) for rule in ruleset.rules) or "none"
        raise NotFoundError(
            f"limit rule {rule_id!r} does not exist (rule set version {ruleset.version}); "
            f"the rules are: {known}"
        )
    return replace(
        ruleset,
        version=ruleset.version + 1,
        rules=tuple(rule for rule in ruleset.rules if rule.id != rule_id),
    )


def put_deployment_limit(
    ruleset: RuleSet, limit: DeploymentLimit, expected_version: int | None
) -> RuleSet:
    """The next version with `limit` set for its deployment."""
    _check_version(ruleset, expected_version)
    others = [d for d in ruleset.deployments if d.deployment != limit.deployment]
    return replace(
        ruleset,
        version=ruleset.version + 1,
        deployments=tuple(sorted([*others, limit], key=lambda d: d.deployment)),
    )


def delete_deployment_limit(
    ruleset: RuleSet, deployment: str, expected_version: int | None
) -> RuleSet:
    """The next version without a cap on `deployment`; `NotFoundError` if it has none."""
    _check_version(ruleset, expected_version)
    if ruleset.deployment_limit(deployment) is None:
        known = ", ".join(repr(d.deployment) for d in ruleset.deployments) or "none"
        raise NotFoundError(
            f"deployment {deployment!r} has no limit (rule set version {ruleset.version}); "
            f"deployments with one: {known}"
        )
    return replace(
        ruleset,
        version=ruleset.version + 1,
        deployments=tuple(d for d in ruleset.deployments if d.deployment != deployment),
    )


def _check_version(ruleset: RuleSet, expected_version: int | None) -> None:
    if expected_version is not None and expected_version != ruleset.version:
        raise ConflictError(
            f"the rule set is at version {ruleset.version}, not the expected version "
            f"{expected_version}: someone else changed the rules; read them again and retry"
        )


def _check_unique_ids(rules: Iterable[LimitRule], where: str) -> None:
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise ValidationError(
                f"rule id {rule.id!r} appears more than once in {where}: ids must be unique"
            )
        seen.add(rule.id)


def _ordered(rules: Iterable[LimitRule]) -> tuple[LimitRule, ...]:
    return tuple(sorted(rules, key=lambda rule: rule.id))


@dataclass(frozen=True, slots=True)
class RateState:
    """GCRA: the theoretical arrival time of the next start, in milliseconds."""

    tat_ms: float = 0.0


def gcra_next_start_ms(state: RateState, rate_per_s: float, burst: int, now_ms: int) -> float:
    """The earliest instant a start conforms: `now` when it may start at once.

    Each start is spaced by 1/rate; up to `burst` starts may come at once. Excess waits
    (the caller keeps it queued until then); it is never dropped.
    """
    interval = 1000.0 / rate_per_s
    tolerance = interval * (burst - 1)
    tat = max(state.tat_ms, float(now_ms))
    return max(float(now_ms), tat - tolerance)


def gcra_started(state: RateState, rate_per_s: float, now_ms: int) -> RateState:
    """The state after a start at `now` (which must conform)."""
    return RateState(max(state.tat_ms, float(now_ms)) + 1000.0 / rate_per_s)
