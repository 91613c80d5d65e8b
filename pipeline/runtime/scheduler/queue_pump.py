"""Which waiting invocations start now: the limit rules in force, over a partition.

The decisions are the core's (`admission`, `fair_share`); this module walks the
queues a batch touched, asks, and hands each head that may start to `admit`.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TypeVar

from pipeline.core.admission import Blocked, admission
from pipeline.core.deployment import DeploymentLimit
from pipeline.core.fair_share import (
    Contender,
    fair_order,
    scope_admission,
    start_tag,
    started,
)
from pipeline.core.limits import LimitRule, RuleSet, governing_rule, scope_rule, scopes_affected
from pipeline.core.model import QueueId
from pipeline.core.state import VirtualQueue
from pipeline.runtime.scheduler.partition_state import PartitionState

log = logging.getLogger(__name__)

# Starts the head of a queue (state, queue, now); False when it found no head.
AdmitHead = Callable[[PartitionState, QueueId, int], bool]

# Rules are matched per queue; a million queues must not mean a million cached matches.
_CACHE_SIZE = 50_000

_K = TypeVar("_K")
_V = TypeVar("_V")


class RulesInForce:
    """The limit rules the scheduler applies, and which of them governs what."""

    def __init__(self) -> None:
        self.version = 0
        self._rules: tuple[LimitRule, ...] = ()
        self._queue_rules: dict[QueueId, LimitRule | None] = {}
        self._scope_rules: dict[str, LimitRule | None] = {}
        self._deployments: dict[str, DeploymentLimit] = {}

    def put(self, ruleset: RuleSet) -> frozenset[str] | None:
        """Apply `ruleset`; the scopes it may govern differently (None: possibly all)."""
        for rule in ruleset.rules:
            if rule.pattern.is_scope_budget and rule.max_queued is not None:
                # Stored before scope budgets existed; new ones are refused at `put`.
                log.warning(
                    "rule %r: max_queued=%d on the scope budget %s is ignored; put it on "
                    "%s/* to cap each queue's backlog",
                    rule.id,
                    rule.max_queued,
                    rule.pattern,
                    rule.pattern,
                )
        affected = scopes_affected(self._rules, ruleset.rules)
        self._rules = ruleset.rules
        self._deployments = {d.deployment: d for d in ruleset.deployments}
        self.version = ruleset.version
        self._queue_rules.clear()
        self._scope_rules.clear()
        return affected

    def rule_for(self, queue_id: QueueId) -> LimitRule | None:
        """The queue's own rule."""
        return _cached(self._queue_rules, queue_id, lambda q: governing_rule(self._rules, q))

    def deployment_limit(self, deployment: str) -> DeploymentLimit | None:
        """The cap on the pool of workers serving the service `deployment`."""
        return self._deployments.get(deployment)

    def scope_rule_for(self, scope: str) -> LimitRule | None:
        """The budget of the scope as a whole."""
        return _cached(self._scope_rules, scope, lambda s: scope_rule(self._rules, s))


def pump(state: PartitionState, rules: RulesInForce, now: int, admit: AdmitHead) -> None:
    """Start the heads of waiting queues, in priority and FIFO order, within limits."""
    budgeted: dict[str, list[QueueId]] = {}
    for queue_id in state.queues_to_pump(now):
        queue = state.queue_or_none(queue_id)
        if queue is not None and queue.is_idle_at(now):
            state.put_queue(queue, now)  # its rate debt or hold ran out: drop its state
        if rules.scope_rule_for(queue_id.scope) is None:
            _pump_queue(state, rules, queue_id, now, admit)
        else:
            budgeted.setdefault(queue_id.scope, []).append(queue_id)
    for scope, touched in budgeted.items():
        budget = rules.scope_rule_for(scope)
        assert budget is not None
        _pump_scope(state, rules, scope, budget, now, admit, touched)


def _pump_queue(
    state: PartitionState, rules: RulesInForce, queue_id: QueueId, now: int, admit: AdmitHead
) -> None:
    rule = rules.rule_for(queue_id)
    while (queue := state.queue_or_none(queue_id)) is not None and queue.queued > 0:
        verdict = admission(queue, rule, now)
        if isinstance(verdict, Blocked):
            _hold(state, queue, verdict, now)
            return
        _release(state, queue, now)
        if not admit(state, queue_id, now):
            return


def _pump_scope(
    state: PartitionState,
    rules: RulesInForce,
    scope: str,
    budget: LimitRule,
    now: int,
    admit: AdmitHead,
    touched: list[QueueId],
) -> None:
    """Start heads of the scope's queues while its budget allows, in fair-share order.

    `touched` are the scope's queues that asked for this pass (at least one). The
    scope's waiting queues are read in `fair_order` only as far as the starts need:
    a budget with room for a few starts reads a few queues, however many wait.
    """
    # Any queue's wake pumps the whole scope: the first one stands for it.
    if _scope_blocked(state, scope, budget, now, touched[0]):
        return  # before reading the queues: a full budget is the common case under load
    source = _waiting_queues(state, scope, touched)
    unread = next(source, None)
    # Ready queues read so far, by `fair_order`. One that is not ready stays not ready
    # for the rest of this pass (time stands still, and only starts happen).
    heap: list[tuple[tuple[float, str], QueueId]] = []
    contenders: dict[QueueId, Contender] = {}

    def offer(queue: VirtualQueue) -> None:
        rule = rules.rule_for(queue.id)
        verdict = admission(queue, rule, now)
        if isinstance(verdict, Blocked):
            _hold(state, queue, verdict, now)
            return
        contenders[queue.id] = Contender(queue, rule)
        heapq.heappush(heap, (fair_order(queue), queue.id))

    def read_ahead() -> None:
        """Read until the heap's top comes before every queue not read yet."""
        nonlocal unread
        while unread is not None and (not heap or fair_order(unread) < heap[0][0]):
            offer(unread)
            unread = next(source, None)

    read_ahead()
    while heap:
        load = state.scope_load(scope)
        if _scope_blocked(state, scope, budget, now, heap[0][1]):
            return
        _, queue_id = heapq.heappop(heap)
        chosen = contenders.pop(queue_id)
        _release(state, state.queue(queue_id), now)
        read_ahead()
        others = start_tag(contenders[heap[0][1]].queue, load) if heap else None
        load, vfinish = started(load, chosen, others, budget, now)
        if not admit(state, queue_id, now):
            return
        state.put_queue(replace(state.queue(queue_id), vfinish=vfinish), now)
        state.put_scope(
            replace(
                state.scope_load(scope),
                vclock=load.vclock,
                vmax=load.vmax,
                rate_tat_ms=load.rate_tat_ms,
            ),
            now,
        )
        queue = state.queue_or_none(queue_id)
        if queue is not None and queue.queued:
            offer(queue)
        read_ahead()


def _waiting_queues(
    state: PartitionState, scope: str, touched: list[QueueId]
) -> Iterator[VirtualQueue]:
    """The scope's queues with work waiting, in `fair_order`. When the touched ones hold
    all the scope's waiting work, no other queue needs reading: with a budget that has
    room, that is every batch of a steady load."""
    queues = [q for q in map(state.queue_or_none, touched) if q is not None and q.queued]
    if sum(q.queued for q in queues) >= state.scope_load(scope).queued:
        return iter(sorted(queues, key=fair_order))
    return state.queues_of_scope(scope)


def _scope_blocked(
    state: PartitionState, scope: str, budget: LimitRule, now: int, wake: QueueId
) -> bool:
    """Whether the scope's budget holds every start back; wakes `wake` when it frees.
    The verdict is kept with the scope's load, for reports to restate."""
    load = state.scope_load(scope)
    verdict = scope_admission(load, budget, now)
    if not isinstance(verdict, Blocked):
        if load.blocked is not None:
            state.put_scope(replace(load, blocked=None), now)
        return False
    if load.blocked != verdict:
        state.put_scope(replace(load, blocked=replace(verdict, decided_at_ms=now)), now)
    _wake_when_clear(state, wake, verdict)
    return True


def _hold(state: PartitionState, queue: VirtualQueue, verdict: Blocked, now: int) -> None:
    """The head waits: keep why with the queue (a report restates it), and look again
    when a timed blocker clears."""
    if queue.blocked != verdict:
        state.put_queue(replace(queue, blocked=replace(verdict, decided_at_ms=now)), now)
    _wake_when_clear(state, queue.id, verdict)


def _release(state: PartitionState, queue: VirtualQueue, now: int) -> None:
    """The head starts: nothing holds the queue back any more."""
    if queue.blocked is not None:
        state.put_queue(replace(queue, blocked=None), now)


def _wake_when_clear(state: PartitionState, queue_id: QueueId, verdict: Blocked) -> None:
    """Look at the queue again when a timed blocker (rate, hold) clears. Concurrency and
    pauses clear on a change (an attempt ending, a rule edited), which pumps it anyway."""
    if verdict.until_ms is not None:
        state.wake_queue_at(queue_id, verdict.until_ms)


def _cached(cache: dict[_K, _V], key: _K, compute: Callable[[_K], _V]) -> _V:
    """`compute(key)`, remembered; the cache is emptied when it is full."""
    try:
        return cache[key]
    except KeyError:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        value = cache[key] = compute(key)
        return value
