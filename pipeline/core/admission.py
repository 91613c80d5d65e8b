"""Whether the head of a virtual queue may start now, and if not, what blocks it."""

from __future__ import annotations

import math

from pipeline.core.limits import LimitRule, RateState, gcra_next_start_ms
from pipeline.core.state import VirtualQueue
from pipeline.core.verdict import ADMIT, Admission, Admit, Blocked, Blocker, LimitLevel

__all__ = ["ADMIT", "Admission", "Admit", "Blocked", "Blocker", "LimitLevel", "admission"]


def admission(queue: VirtualQueue, rule: LimitRule | None, now_ms: int) -> Admission:
    if queue.paused_until_ms is not None and queue.paused_until_ms > now_ms:
        return Blocked(Blocker.PAUSED_UNTIL, until_ms=queue.paused_until_ms)
    if rule is None:
        return ADMIT
    if rule.paused:
        return Blocked(Blocker.PAUSED, rule_id=rule.id)
    if rule.concurrency is not None and queue.running >= rule.concurrency:
        return Blocked(Blocker.CONCURRENCY, rule_id=rule.id)
    if rule.rate_per_s is not None:
        at = gcra_next_start_ms(RateState(queue.rate_tat_ms), rule.rate_per_s, rule.burst, now_ms)
        if at > now_ms:
            return Blocked(Blocker.RATE, until_ms=math.ceil(at), rule_id=rule.id)
    return ADMIT
