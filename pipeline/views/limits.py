"""The limit rule set in force, as the limits control topic last holds it."""

from __future__ import annotations

from pipeline.codec.records import WireCodec
from pipeline.core.limits import RuleSet
from pipeline.kafka.config import ClusterConfig
from pipeline.runtime.limit_rules import decode_record, newest
from pipeline.views.compacted import CompactedTopicView
from topics import TopicNames


class LimitRulesView(CompactedTopicView):
    """The newest limit rule set on the limits control topic (version 0 before any).

    A process that writes rules offers what it wrote (`offer`), so that it reads its own
    write at once; the record, when it comes back, is not newer and changes nothing.
    """

    def __init__(self, cluster: ClusterConfig, names: TopicNames, codec: WireCodec) -> None:
        super().__init__(cluster, names.limits)
        self._codec = codec
        self._ruleset = RuleSet()

    def ruleset(self) -> RuleSet:
        with self._lock:
            return self._ruleset

    def offer(self, ruleset: RuleSet) -> bool:
        """Keep `ruleset` if it is newer than the one held; True when it was."""
        with self._lock:
            kept = newest(self._ruleset, ruleset)
            changed = kept is not self._ruleset
            self._ruleset = kept
        return changed

    def _apply(self, key: str, value: bytes | None) -> None:
        candidate = decode_record(self._codec, key.encode(), value)
        if candidate is not None:
            self.offer(candidate)
