"""Limit rules without Kafka: the real store over an in-memory cache and writer."""

from __future__ import annotations

from pipeline.core.limits import RuleSet
from pipeline.runtime.limit_rules import LimitRuleStore, newest


class MemoryRuleCache:
    def __init__(self, ruleset: RuleSet | None = None, *, caught_up: bool = True) -> None:
        self._ruleset = ruleset if ruleset is not None else RuleSet()
        self.caught_up = caught_up

    def ruleset(self) -> RuleSet:
        return self._ruleset

    def offer(self, ruleset: RuleSet) -> bool:
        kept = newest(self._ruleset, ruleset)
        changed, self._ruleset = kept is not self._ruleset, kept
        return changed


class RecordingWriter:
    """Keeps each written rule set instead of producing it; `failure` makes writes fail."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.written: list[RuleSet] = []
        self.failure = failure

    def write(self, ruleset: RuleSet) -> None:
        if self.failure is not None:
            raise self.failure
        self.written.append(ruleset)


def memory_limit_rules(
    ruleset: RuleSet | None = None,
    *,
    writer: RecordingWriter | None = None,
    caught_up: bool = True,
) -> LimitRuleStore:
    return LimitRuleStore(
        MemoryRuleCache(ruleset, caught_up=caught_up),
        writer if writer is not None else RecordingWriter(),
    )
