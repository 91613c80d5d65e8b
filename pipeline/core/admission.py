"""Whether the head of a virtual queue may start now, and if not, what blocks it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from pipeline.core.limits import LimitRule, RateState, gcra_next_start_ms
from pipeline.core.state import VirtualQueue


class LimitLevel(StrEnum):
    """Whose budget blocks: the queue's own rule, its scope's shared budget, or the cap
    of the deployment serving it."""

    QUEUE = "queue"
    SCOPE = "scope"
    DEPLOYMENT = "deployment"


class Blocker(StrEnum):
    PAUSED = "paused"
    PAUSED_UNTIL = "paused_until"
    CONCURRENCY = "concurrency"
    RATE = "rate"
    # Admitted invocations hold the queue's slots while their deployment's cap is full.
    DEPLOYMENT_CAPACITY = "deployment_capacity"


@dataclass(frozen=True, slots=True)
class Admit:
    pass


@dataclass(frozen=True, slots=True)
class Blocked:
    """What holds the head back; `until_ms` is when to look again (None: on a change)."""

    blocker: Blocker
    until_ms: int | None = None
    rule_id: str | None = None
    level: LimitLevel = LimitLevel.QUEUE


Admission = Admit | Blocked

ADMIT = Admit()


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
