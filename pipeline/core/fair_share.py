"""Scope budgets, and which waiting queue of a scope starts next.

A rule whose pattern is a bare scope (`acme`) is that scope's budget: one concurrency
limit, rate and pause for all of the scope's queues together, on top of each queue's
own rule. When queues of a scope wait for the same budget, start-time fair queueing
shares the starts between them in proportion to the `weight` of each queue's own rule:

- each queue carries a finish tag, the scope a virtual clock;
- the waiting queue with the smallest start tag, max(finish, clock), goes next, and
  its finish tag moves to that start tag + 1/weight; equal start tags go by finish
  tag, then limit key (`fair_order`);
- the clock then moves up to the smallest start tag among the queues still waiting.

Since max(finish, clock) never puts two queues in another order than their finish
tags do, `fair_order` is the start order whatever the clock: the shell keeps the
contenders in a heap across the starts of one pass instead of comparing them all at
every start.

An idle queue's state is dropped (memory must not grow with the number of queues), so
a queue that comes back has no finish tag of its own: it gets one just above every
finish tag handed out so far in the scope (`vmax`), behind every queue already
waiting. A tag just above the clock is not enough: the clock trails the tags of
queues that have started and wait again, so a queue that goes idle and comes back
between two starts would get ahead of them every time and starve them. No waiting
queue starves: every start raises the starter's tag by 1/weight, and a newcomer never
gets a tag below a waiting queue's, so the queue with the smallest tag is reached
after a bounded number of starts. Between two queues that both keep waiting, starts
divided by weight never differ by more than 1/w1 + 1/w2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pipeline.core.admission import ADMIT, Admission, Admit, Blocked, Blocker, LimitLevel, admission
from pipeline.core.limits import LimitRule, RateState, gcra_next_start_ms, gcra_started
from pipeline.core.state import VirtualQueue


@dataclass(frozen=True, slots=True)
class ScopeLoad:
    """What runs and waits in one scope, and the state of its budget and fair share."""

    scope: str
    running: int = 0
    queued: int = 0
    rate_tat_ms: float = 0.0
    vclock: float = 0.0
    vmax: float = 0.0  # the greatest finish tag handed out in the scope
    # What the scheduler last found holding every start of the scope back (its budget).
    blocked: Blocked | None = None

    def is_idle_at(self, now_ms: int) -> bool:
        return self.running == 0 and self.queued == 0 and self.rate_tat_ms <= now_ms

    def counted(self, before: VirtualQueue | None, after: VirtualQueue | None) -> ScopeLoad:
        """The load once one of its queues went from `before` to `after`."""
        return replace(
            self,
            running=self.running + _count(after, "running") - _count(before, "running"),
            queued=self.queued + _count(after, "queued") - _count(before, "queued"),
        )


@dataclass(frozen=True, slots=True)
class Contender:
    """A queue of the scope with work waiting, under its own rule."""

    queue: VirtualQueue
    rule: LimitRule | None

    def ready(self, now_ms: int) -> bool:
        """Work waits, and the queue's own rule lets its head start now."""
        return self.queue.queued > 0 and isinstance(admission(self.queue, self.rule, now_ms), Admit)


def scope_admission(load: ScopeLoad, rule: LimitRule | None, now_ms: int) -> Admission:
    """Whether the scope's budget allows one more start now."""
    if rule is None:
        return ADMIT
    if rule.paused:
        return Blocked(Blocker.PAUSED, rule_id=rule.id, level=LimitLevel.SCOPE)
    if rule.concurrency is not None and load.running >= rule.concurrency:
        return Blocked(Blocker.CONCURRENCY, rule_id=rule.id, level=LimitLevel.SCOPE)
    if rule.rate_per_s is not None:
        at = gcra_next_start_ms(RateState(load.rate_tat_ms), rule.rate_per_s, rule.burst, now_ms)
        if at > now_ms:
            return Blocked(
                Blocker.RATE, until_ms=math.ceil(at), rule_id=rule.id, level=LimitLevel.SCOPE
            )
    return ADMIT


def start_tag(queue: VirtualQueue, load: ScopeLoad) -> float:
    return max(queue.vfinish, load.vclock)


def arrival_tag(load: ScopeLoad) -> float:
    """The finish tag of a queue that just appeared in the scope: behind every queue
    that waits."""
    return math.nextafter(max(load.vclock, load.vmax), math.inf)


def fair_order(queue: VirtualQueue) -> tuple[float, str]:
    """The order the ready queues of a scope start in, for any clock."""
    return (queue.vfinish, queue.id.limit_key)


def next_to_start(
    load: ScopeLoad, contenders: Sequence[Contender], now_ms: int
) -> Contender | None:
    """The contender whose head starts next, among those their own rule lets start."""
    return min(
        (c for c in contenders if c.ready(now_ms)), key=lambda c: fair_order(c.queue), default=None
    )


def next_tag(load: ScopeLoad, contenders: Sequence[Contender], now_ms: int) -> float | None:
    """The smallest start tag among `contenders` that may start now, if any."""
    ready = [start_tag(c.queue, load) for c in contenders if c.ready(now_ms)]
    return min(ready, default=None)


def started(
    load: ScopeLoad,
    chosen: Contender,
    others_tag: float | None,
    scope_rule: LimitRule | None,
    now_ms: int,
) -> tuple[ScopeLoad, float]:
    """The scope's clock and rate state once `chosen` started, and its new finish tag.

    `others_tag` is the smallest start tag among the other queues that may start now
    (`next_tag`). Counts (running, queued) are not touched here: they follow the
    queues' own counts.
    """
    tag = start_tag(chosen.queue, load)
    weight = 1 if chosen.rule is None else chosen.rule.weight
    finish = tag + 1 / weight
    waiting = [] if others_tag is None else [others_tag]
    if chosen.queue.queued > 1:
        waiting.append(finish)
    vclock = max(load.vclock, min(waiting, default=tag))
    rate_tat_ms = load.rate_tat_ms
    if scope_rule is not None and scope_rule.rate_per_s is not None:
        rate_tat_ms = gcra_started(RateState(rate_tat_ms), scope_rule.rate_per_s, now_ms).tat_ms
    vmax = max(load.vmax, finish)
    return replace(load, vclock=vclock, vmax=vmax, rate_tat_ms=rate_tat_ms), finish


def _count(queue: VirtualQueue | None, field: str) -> int:
    return 0 if queue is None else int(getattr(queue, field))
