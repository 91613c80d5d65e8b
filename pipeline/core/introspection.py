"""Why a queue or an invocation is waiting: reports derived from the scheduler's state.

Nothing here decides anything: the reports restate what the scheduler last decided for
the queue's head, as it wrote it with the queue's state (`VirtualQueue.blocked`, and
`ScopeLoad.blocked` for a scope's budget), so that what an operator reads is what the
scheduler did, not a recomputation at the reader's clock over older state. Only state
without a decision (written by an older scheduler) is judged here, by `admission`.

A queue's head is its pending invocation with the smallest (priority, queue_seq, id),
the order the scheduler admits in. Only the head is checked against the limits; every
other pending invocation waits for the ones ahead of it, so its blocker is the head's
and `ahead` says how many go first. The head is checked against its scope's shared
budget first, then against the queue's own rule; the blocker says which (`level`).

Under a deployment cap, invocations the queue admitted hold its slots until the cap
grants them a unit (`awaiting_capacity`). When that is what keeps the head back (the
queue's concurrency is spent on them, or nothing is left queued but they), the
blocker is `deployment_capacity`: the head moves only once the deployment's other
work ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.core.admission import Admission, Admit, Blocked, Blocker, LimitLevel, admission
from pipeline.core.fair_share import ScopeLoad, scope_admission
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.limits import LimitRule, governing_rule, scope_rule
from pipeline.core.model import QueueId
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.errors import ValidationError

DEFAULT_SCOPE = "~"
"""How an address names the empty scope of a service's default queue (`~/Greeter`): `~`
is no valid scope, so it cannot be taken for a real one, and it needs no URL escaping."""

# These clear by themselves at a known instant; the others wait for a change (a start
# ending, a rule being edited), so no instant can be promised for them.
_TIMED_BLOCKERS = frozenset({Blocker.PAUSED_UNTIL, Blocker.RATE})


@dataclass(frozen=True, slots=True)
class ScopeBudgetReport:
    """The shared budget of a queue's scope (a rule on the bare scope) and its totals."""

    rule_id: str
    concurrency: int | None
    rate_per_s: float | None
    burst: int
    paused: bool
    running: int  # in all queues of the scope
    queued: int


@dataclass(frozen=True, slots=True)
class QueueReport:
    """A queue's rule in force, its counts and what holds its head back.

    `rule_*` fields are None when no rule matches (no limits). `head_blocker`,
    `blocked_until_ms` and `next_eligible_ms` are None when nothing is queued.
    `next_eligible_ms` is the earliest instant the head could start if nothing else
    changes: `now` when it may start at once, None when it waits for a change
    (concurrency, a paused rule).
    """

    queue_id: QueueId
    rule_id: str | None
    rule_pattern: str | None
    concurrency: int | None
    rate_per_s: float | None
    burst: int | None
    paused: bool
    max_queued: int | None
    running: int
    queued: int
    head_blocker: Blocker | None
    blocked_until_ms: int | None
    next_eligible_ms: int | None
    head_blocker_level: LimitLevel | None = None
    scope_budget: ScopeBudgetReport | None = None
    awaiting_capacity: int = 0
    decided_at_ms: int | None = None  # when the scheduler decided the blocker shown


@dataclass(frozen=True, slots=True)
class WaitingReport:
    """Where a pending invocation stands in its queue.

    `position` is 1-based (1: the head); `ahead` pending invocations start before it.
    `blocker` is what holds the queue's head back, None when the head may start now
    (then the invocation waits only for the `ahead` ones).
    """

    queue_id: QueueId
    position: int
    ahead: int
    blocker: Blocker | None
    blocked_until_ms: int | None
    rule_id: str | None = None  # the rule whose limit blocks, when a rule does
    level: LimitLevel | None = None  # whose budget blocks: the queue's or its scope's
    deployment: str | None = None  # for deployment_capacity: whose cap


def queue_report(
    queue: VirtualQueue,
    rules: Iterable[LimitRule],
    now_ms: int,
    scope: ScopeLoad | None = None,
) -> QueueReport:
    """`scope` is the load of the queue's scope; None: not read (taken as idle)."""
    rules = tuple(rules)
    rule = governing_rule(rules, queue.id)
    budget = scope_rule(rules, queue.id.scope)
    load = scope if scope is not None else ScopeLoad(queue.id.scope)
    blocker: Blocker | None = None
    level: LimitLevel | None = None
    blocked_until_ms: int | None = None
    next_eligible_ms: int | None = None
    decided_at_ms: int | None = None
    if queue.queued > 0:
        decided = _decided(queue, budget, load)
        if decided is not None:
            blocker, blocked_until_ms, level = decided.blocker, decided.until_ms, decided.level
            next_eligible_ms, decided_at_ms = decided.until_ms, decided.decided_at_ms
        else:
            verdict = _head_admission(queue, rule, budget, load, now_ms)
            if isinstance(verdict, Blocked):
                blocker, blocked_until_ms, level = verdict.blocker, verdict.until_ms, verdict.level
            next_eligible_ms = _next_eligible_ms(queue, rule, budget, load, now_ms)
    if queue.awaiting_capacity and (
        queue.queued == 0 or (blocker is Blocker.CONCURRENCY and level is LimitLevel.QUEUE)
    ):
        blocker, level = Blocker.DEPLOYMENT_CAPACITY, LimitLevel.DEPLOYMENT
        blocked_until_ms = next_eligible_ms = decided_at_ms = None
    scope_budget = None
    if budget is not None:
        scope_budget = ScopeBudgetReport(
            rule_id=budget.id,
            concurrency=budget.concurrency,
            rate_per_s=budget.rate_per_s,
            burst=budget.burst,
            paused=budget.paused,
            running=load.running,
            queued=load.queued,
        )
    return QueueReport(
        queue_id=queue.id,
        rule_id=None if rule is None else rule.id,
        rule_pattern=None if rule is None else str(rule.pattern),
        concurrency=None if rule is None else rule.concurrency,
        rate_per_s=None if rule is None else rule.rate_per_s,
        burst=None if rule is None else rule.burst,
        paused=rule is not None and rule.paused,
        max_queued=None if rule is None else rule.max_queued,
        running=queue.running,
        queued=queue.queued,
        head_blocker=blocker,
        blocked_until_ms=blocked_until_ms,
        next_eligible_ms=next_eligible_ms,
        head_blocker_level=level,
        scope_budget=scope_budget,
        awaiting_capacity=queue.awaiting_capacity,
        decided_at_ms=decided_at_ms,
    )


def _decided(queue: VirtualQueue, budget: LimitRule | None, load: ScopeLoad) -> Blocked | None:
    """What the scheduler last found holding the head back, as it wrote it with the
    state: the scope's budget first (it holds every queue of the scope), then the
    queue's own. None: nothing was written (state of an older scheduler, or a head that
    may start)."""
    if budget is not None and load.blocked is not None:
        return load.blocked
    return queue.blocked


def _head_admission(
    queue: VirtualQueue,
    rule: LimitRule | None,
    budget: LimitRule | None,
    load: ScopeLoad,
    now_ms: int,
) -> Admission:
    verdict = scope_admission(load, budget, now_ms)
    return verdict if isinstance(verdict, Blocked) else admission(queue, rule, now_ms)


def waiting_report(
    invocation: Invocation,
    ahead: int,
    queue: VirtualQueue | None,
    rules: Iterable[LimitRule],
    now_ms: int,
    scope: ScopeLoad | None = None,
) -> WaitingReport:
    """Where `invocation` (pending) stands in its queue, with `ahead` pending invocations
    before it in the order the scheduler admits (`waiting_order`). `queue` None (its
    state not read yet) is taken as a queue with nothing running and no rate debt.
    """
    if invocation.status is not InvocationStatus.PENDING:
        raise ValidationError(
            f"invocation {invocation.id!r} is {invocation.status.value}, not pending: "
            "only a pending invocation waits in a queue"
        )
    queue_id = invocation.queue_id
    state = queue if queue is not None else VirtualQueue(queue_id)
    rules = tuple(rules)
    budget = scope_rule(rules, queue_id.scope)
    load = scope if scope is not None else ScopeLoad(queue_id.scope)
    blocked = _decided(state, budget, load)
    if blocked is None:
        verdict = _head_admission(state, governing_rule(rules, queue_id), budget, load, now_ms)
        blocked = verdict if isinstance(verdict, Blocked) else None
    return WaitingReport(
        queue_id=queue_id,
        position=ahead + 1,
        ahead=ahead,
        blocker=None if blocked is None else blocked.blocker,
        blocked_until_ms=None if blocked is None else blocked.until_ms,
        rule_id=None if blocked is None else blocked.rule_id,
        level=None if blocked is None else blocked.level,
    )


def awaiting_report(invocation: Invocation, ahead: int) -> WaitingReport:
    """Where `invocation` (awaiting capacity) stands among those awaiting the same cap,
    with `ahead` before it in the order its partition takes them in (`awaiting_order`);
    the partitions take turns, so it is the order on its partition, not across all.
    """
    deployment = invocation.deployment
    if invocation.status is not InvocationStatus.AWAITING_CAPACITY or deployment is None:
        raise ValidationError(
            f"invocation {invocation.id!r} is {invocation.status.value}, not awaiting "
            "deployment capacity"
        )
    return WaitingReport(
        queue_id=invocation.queue_id,
        position=ahead + 1,
        ahead=ahead,
        blocker=Blocker.DEPLOYMENT_CAPACITY,
        blocked_until_ms=None,
        level=LimitLevel.DEPLOYMENT,
        deployment=deployment,
    )


def explain(report: QueueReport) -> str:
    """One sentence on what the queue's head waits for, naming the rule that limits it."""
    if report.head_blocker is Blocker.DEPLOYMENT_CAPACITY:
        return (
            f"{report.awaiting_capacity} of the {report.running} invocations this queue "
            "admitted wait for the cap of the deployment that runs them (GET "
            "/deployments): they start as its other work ends, and the queue's head after"
        )
    if report.queued == 0:
        return f"nothing waits; {report.running} running"
    budget = report.scope_budget
    if report.head_blocker_level is LimitLevel.SCOPE and budget is not None:
        return _explain_scope(report.head_blocker, report.queue_id.scope, budget)
    rule = f"rule {report.rule_id!r} ({report.rule_pattern})"
    match report.head_blocker:
        case None if budget is not None:
            return (
                f"the head may start now: the scheduler admits it on its next pass, taking "
                f"turns by weight with the other queues of scope {report.queue_id.scope!r}"
            )
        case None:
            return "the head may start now: the scheduler admits it on its next pass"
        case Blocker.CONCURRENCY:
            return (
                f"{report.running} running, the concurrency limit of {rule} is "
                f"{report.concurrency}: the head starts when one ends"
            )
        case Blocker.RATE:
            return (
                f"the rate limit of {rule}, {report.rate_per_s:g}/s with burst {report.burst}, "
                "is spent: the head starts at next_eligible"
            )
        case Blocker.PAUSED:
            return f"{rule} is paused: nothing starts until the rule is changed"
        case Blocker.PAUSED_UNTIL:
            return (
                "a handler asked the queue to hold (RateLimited): nothing starts before "
                "blocked_until"
            )


def _explain_scope(blocker: Blocker | None, scope: str, budget: ScopeBudgetReport) -> str:
    rule = f"rule {budget.rule_id!r}, the budget of scope {scope!r} as a whole"
    match blocker:
        case Blocker.CONCURRENCY:
            return (
                f"{budget.running} running in the whole scope, the concurrency limit of "
                f"{rule} is {budget.concurrency}: the head starts when one ends and the "
                "scope's queues take turns by weight"
            )
        case Blocker.RATE:
            return (
                f"the rate limit of {rule}, {budget.rate_per_s:g}/s with burst "
                f"{budget.burst}, is spent: the head starts at next_eligible at the earliest"
            )
        case _:
            return f"{rule} is paused: nothing in the scope starts until the rule is changed"


def queue_address(queue_id: QueueId) -> str:
    """`scope/limitKey`, with `~` for the empty scope, as paths and the CLI take it."""
    return f"{queue_id.scope or DEFAULT_SCOPE}/{queue_id.limit_key}"


def parse_queue_address(scope: str, limit_key: str) -> QueueId:
    """The queue an address names: `~` (or nothing) as scope is a default queue."""
    if not limit_key:
        raise ValidationError(
            f"queue {scope}/{limit_key} has no limit key: write scope/limitKey, or "
            f"{DEFAULT_SCOPE}/Service for a service's default queue"
        )
    return QueueId(parse_scope(scope), limit_key)


def parse_scope(scope: str) -> str:
    """A scope as an address writes it: `~` is the empty scope of default queues."""
    return "" if scope == DEFAULT_SCOPE else scope


def _next_eligible_ms(
    queue: VirtualQueue,
    rule: LimitRule | None,
    budget: LimitRule | None,
    load: ScopeLoad,
    now_ms: int,
) -> int | None:
    # A timed blocker may hide another behind it (a pause ending while the rate is still
    # spent): look again at the instant it clears. Each timed blocker can show up only
    # once, since the next look is no earlier than it clears.
    at = now_ms
    for _ in range(2 * len(Blocker) + 1):
        verdict = _head_admission(queue, rule, budget, load, at)
        if isinstance(verdict, Admit):
            return at
        if verdict.blocker not in _TIMED_BLOCKERS or verdict.until_ms is None:
            return None
        at = max(at, verdict.until_ms)
    return None
