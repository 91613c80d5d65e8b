"""The scheduler's decisions: `decide(invocation, queue, event, context) -> Decision`.

Pure: state, event and clock reading go in; the new state and the effects come out as
frozen data, which the shell writes to Kafka in one transaction with the consumed
offsets. Nothing here knows about partitions, topics or transactions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.core.admission import Admit, admission
from pipeline.core.lifecycle import InvocationStatus, Transition, transition
from pipeline.core.limits import LimitRule, RateState, gcra_started
from pipeline.core.model import (
    AttemptAlive,
    AttemptCompleted,
    AttemptFailed,
    AttemptFenced,
    AttemptSuspended,
    CallCompletion,
    Caller,
    DispatchOrder,
    EntryAppended,
    EntryKind,
    Failure,
    HandlerDefinition,
    InvocationRequest,
    InvocationResult,
    JournalRecord,
    OnExhausted,
    ResultStatus,
    RetryPolicy,
    Target,
)
from pipeline.core.payload import (
    PayloadLimits,
    cut_failure,
    grown_too_large,
    journal_bytes,
    journal_too_large,
    output_too_large,
    too_large_failure,
)
from pipeline.core.retry import Exhausted, RetryAfter, after_failure
from pipeline.core.state import Invocation, VirtualQueue

# Events


@dataclass(frozen=True, slots=True)
class InvocationArrived:
    request: InvocationRequest


@dataclass(frozen=True, slots=True)
class JournalArrived:
    record: JournalRecord


@dataclass(frozen=True, slots=True)
class TimerDue:
    invocation_id: str


@dataclass(frozen=True, slots=True)
class ResumeRequested:
    invocation_id: str


@dataclass(frozen=True, slots=True)
class Admitted:
    """The invocation is the head of its queue and the queue's limits let it start."""

    invocation_id: str


@dataclass(frozen=True, slots=True)
class CapacityGranted:
    """`deployment` granted the invocation a unit of its cap (`pipeline.core.deployment`)."""

    invocation_id: str
    deployment: str


@dataclass(frozen=True, slots=True)
class CallCompleted:
    """The callee of the invocation's call entry `completion.entry_index` ended."""

    completion: CallCompletion


Event = (
    InvocationArrived
    | JournalArrived
    | TimerDue
    | ResumeRequested
    | Admitted
    | CapacityGranted
    | CallCompleted
)

# Effects


@dataclass(frozen=True, slots=True)
class Dispatch:
    order: DispatchOrder


@dataclass(frozen=True, slots=True)
class EmitResult:
    result: InvocationResult


@dataclass(frozen=True, slots=True)
class AppendFence:
    """Write the fence to the journal; the attempt ends when it is read back."""

    fence: AttemptFenced
    partition_key: str


@dataclass(frozen=True, slots=True)
class SendInvocation:
    """A handler sent an invocation (`ctx.send`): put the journaled request on its way."""

    encoded_request: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The input record cannot be run; keep it, with the reason, on the dead-letter topic."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing changes; said so that logs and metrics can show why (e.g. a stale attempt)."""

    reason: str


@dataclass(frozen=True, slots=True)
class RequestCapacity:
    """Ask the deployment's home partition for one unit of its cap."""

    deployment: str


@dataclass(frozen=True, slots=True)
class ReleaseCapacity:
    """Give one unit of the deployment's cap back: the attempt holding it ended."""

    deployment: str


@dataclass(frozen=True, slots=True)
class CompleteCall:
    """The invocation ended and a caller awaits it: complete the caller's call entry."""

    caller: Caller
    completion: CallCompletion


Effect = (
    Dispatch
    | EmitResult
    | CompleteCall
    | AppendFence
    | SendInvocation
    | RequestCapacity
    | ReleaseCapacity
    | DeadLetter
    | Ignored
)


DEFAULT_LIMITS = PayloadLimits()
MAX_RETRY_AFTER_MS = 30 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class DecisionContext:
    now_ms: int
    handler: HandlerDefinition | None
    lease_timeout_ms: int
    jitter: float  # drawn by the shell in [0, 1), for retry backoff
    retention_ms: int = 24 * 3600 * 1000  # how long a finished invocation is remembered
    rule: LimitRule | None = None  # the rule governing the invocation's queue
    # False when the queue's scope has a shared budget: then only the shell's pump
    # starts work, since it alone sees every queue competing for that budget.
    direct_start: bool = True
    # The deployment of the invocation's service when it has a cap: then an admitted
    # invocation awaits a unit of that cap before its attempt starts.
    capped_deployment: str | None = None
    limits: PayloadLimits = DEFAULT_LIMITS
    # Once a worker reported the attempt (a heartbeat, a step), the lease is renewed for
    # this long only: a dead worker's attempt is fenced within it. Until then the
    # dispatch holds `lease_timeout_ms`, time to wait in `dispatch` for a free slot.
    heartbeat_timeout_ms: int = 3_000
    # Whether the target's service runs per object key, when the service is known.
    service_keyed: bool | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """`invocation`/`queue` are the new states, or None where nothing changed.

    `forget` drops the invocation from state: its retention ran out, and a request with
    its id is a new invocation from then on.
    """

    invocation: Invocation | None = None
    queue: VirtualQueue | None = None
    effects: tuple[Effect, ...] = ()
    forget: bool = False


DEFAULT_RETRY = RetryPolicy()


def decide(
    invocation: Invocation | None, queue: VirtualQueue, event: Event, ctx: DecisionContext
) -> Decision:
    match event:
        case InvocationArrived(request):
            return _arrived(invocation, queue, request, ctx)
        case JournalArrived(record):
            return _journal(invocation, queue, record, ctx)
        case TimerDue():
            return _timer(invocation, queue, ctx)
        case ResumeRequested():
            if invocation is None or invocation.status is not InvocationStatus.PAUSED:
                return Decision(effects=(Ignored("only a paused invocation can be resumed"),))
            pending = invocation.evolve(
                status=transition(invocation.status, Transition.RESUME), wake_at_ms=None
            )
            return _enqueue_and_start(pending, queue, ctx)
        case Admitted():
            if invocation is None or invocation.status is not InvocationStatus.PENDING:
                return Decision(effects=(Ignored("only a pending invocation can be admitted"),))
            return _start(invocation, queue, ctx)
        case CapacityGranted(deployment=deployment):
            return _granted(invocation, queue, deployment, ctx)
        case CallCompleted(completion=completion):
            return _call_completed(invocation, queue, completion, ctx)


def _arrived(
    existing: Invocation | None,
    queue: VirtualQueue,
    request: InvocationRequest,
    ctx: DecisionContext,
) -> Decision:
    if existing is not None:
        return Decision(effects=(Ignored(f"invocation {request.id!r} exists already"),))
    if ctx.handler is None:
        reason = f"no handler {request.target} is registered"
        failed = _refused(request, Failure(reason, "HandlerNotFound", terminal=True), ctx)
        return Decision(invocation=failed, effects=(DeadLetter(reason), *_finished(failed)))
    misfit = _key_misfit(request.target, ctx.service_keyed)
    if misfit is not None:
        refused = _refused(request, Failure(misfit, "InvalidTarget", terminal=True), ctx)
        return Decision(invocation=refused, effects=_finished(refused))
    rule = ctx.rule
    if rule is not None and rule.max_queued is not None and queue.queued >= rule.max_queued:
        reason = (
            f"queue {request.queue_id} is full: {queue.queued} invocations wait, and rule "
            f"{rule.id!r} ({rule.pattern}) allows max_queued={rule.max_queued}"
        )
        rejected = _refused(request, Failure(reason, "QueueFull", terminal=True), ctx)
        return Decision(invocation=rejected, effects=_finished(rejected))
    pending = Invocation(request, InvocationStatus.PENDING)
    return _enqueue_and_start(pending, queue, ctx)


def _key_misfit(target: Target, keyed: bool | None) -> str | None:
    """Why `target` cannot run on its service, when its key does not fit the service."""
    if keyed is None or keyed == (target.key is not None):
        return None
    if keyed:
        return (
            f"{target.service} is a keyed service: call {target.service}/<key>/"
            f"{target.handler} (got {target})"
        )
    return (
        f"{target.service} is not a keyed service: call {target.service}/{target.handler}, "
        f"without the key {target.key!r}"
    )


def _refused(request: InvocationRequest, failure: Failure, ctx: DecisionContext) -> Invocation:
    """An invocation failed on arrival, remembered like any finished one."""
    return Invocation(
        request,
        InvocationStatus.FAILED,
        finished_at_ms=ctx.now_ms,
        last_failure=failure,
        wake_at_ms=ctx.now_ms + ctx.retention_ms,
    )


def _enqueue_and_start(pending: Invocation, queue: VirtualQueue, ctx: DecisionContext) -> Decision:
    queued = replace(queue, queued=queue.queued + 1, next_seq=queue.next_seq + 1)
    pending = pending.evolve(queue_seq=queue.next_seq)
    # Nobody waits ahead and the limits allow a start: run at once. Otherwise it waits
    # for the shell to admit the queue's head (`Admitted`) in priority and FIFO order.
    if (
        ctx.direct_start
        and queue.queued == 0
        and isinstance(admission(queue, ctx.rule, ctx.now_ms), Admit)
    ):
        return _start(pending, queued, ctx)
    return Decision(pending, queued)


def _start(pending: Invocation, queue: VirtualQueue, ctx: DecisionContext) -> Decision:
    """The queue admits `pending`: it takes a slot and a rate token, then runs or, under
    a deployment cap, awaits a unit of it."""
    rate = ctx.rule.rate_per_s if ctx.rule is not None else None
    tat = (
        gcra_started(RateState(queue.rate_tat_ms), rate, ctx.now_ms).tat_ms
        if rate is not None
        else queue.rate_tat_ms
    )
    admitted = replace(queue, queued=queue.queued - 1, running=queue.running + 1, rate_tat_ms=tat)
    return _begin(pending, admitted, ctx)


def _begin(invocation: Invocation, queue: VirtualQueue, ctx: DecisionContext) -> Decision:
    """Start an attempt its queue let in: now, or once its deployment's cap grants a unit."""
    deployment = ctx.capped_deployment
    if deployment is None:
        return _run(invocation, Transition.ADMIT, queue, ctx)
    awaiting = invocation.evolve(
        status=transition(invocation.status, Transition.RESERVE),
        deployment=deployment,
        awaiting_since_ms=ctx.now_ms,
        wake_at_ms=None,
    )
    queue = replace(queue, awaiting_capacity=queue.awaiting_capacity + 1)
    return Decision(awaiting, queue, (RequestCapacity(deployment),))


def _granted(
    invocation: Invocation | None, queue: VirtualQueue, deployment: str, ctx: DecisionContext
) -> Decision:
    if invocation is None or invocation.status is not InvocationStatus.AWAITING_CAPACITY:
        # Cannot happen while each demand is granted once; if it does, the unit goes
        # back, or the deployment would lose it for good.
        return Decision(
            effects=(
                Ignored("only an invocation awaiting capacity takes it"),
                ReleaseCapacity(deployment),
            )
        )
    queue = replace(queue, awaiting_capacity=max(0, queue.awaiting_capacity - 1))
    holding = invocation.evolve(deployment=deployment, awaiting_since_ms=None)
    return _run(holding, Transition.GRANT, queue, ctx)


def _run(
    invocation: Invocation, move: Transition, queue: VirtualQueue, ctx: DecisionContext
) -> Decision:
    attempt = invocation.attempt + 1
    running = invocation.evolve(
        status=transition(invocation.status, move),
        attempt=attempt,
        wake_at_ms=ctx.now_ms + ctx.lease_timeout_ms,
        fence_requested=False,
        first_started_at_ms=invocation.first_started_at_ms or ctx.now_ms,
    )
    order = DispatchOrder(invocation.request, attempt, invocation.journal)
    return Decision(running, queue, (Dispatch(order),))


def _journal(
    invocation: Invocation | None,
    queue: VirtualQueue,
    record: JournalRecord,
    ctx: DecisionContext,
) -> Decision:
    if invocation is None:
        return Decision(effects=(Ignored(f"unknown invocation {record.invocation_id!r}"),))
    if invocation.status is not InvocationStatus.RUNNING or record.attempt != invocation.attempt:
        return Decision(
            effects=(
                Ignored(
                    f"attempt {record.attempt} of {invocation.id!r} is not current "
                    f"(status {invocation.status.value}, attempt {invocation.attempt})"
                ),
            )
        )
    match record:
        case EntryAppended(entry=entry):
            expected = len(invocation.journal)
            if entry.index != expected:
                return Decision(
                    effects=(Ignored(f"entry {entry.index} arrived, expected {expected}"),)
                )
            too_large = journal_too_large(journal_bytes(invocation.journal), entry, ctx.limits)
            if too_large is not None:
                return _failed(invocation, queue, too_large_failure(too_large), None, ctx)
            if entry.failure is not None:
                entry = replace(entry, failure=cut_failure(entry.failure, ctx.limits))
            wake = _renewed_lease(invocation, ctx)
            sends: tuple[Effect, ...] = ()
            if entry.kind in (EntryKind.SEND, EntryKind.CALL) and entry.value is not None:
                sends = (SendInvocation(entry.value),)
            if entry.kind is EntryKind.CALL:
                # The request went out; the entry's value will be the callee's output.
                entry = replace(entry, value=None, failure=None)
            return Decision(
                invocation.evolve(journal=(*invocation.journal, entry), wake_at_ms=wake),
                effects=sends,
            )
        case AttemptCompleted(output=output):
            too_large = output_too_large(output, ctx.limits)
            if too_large is not None:
                return _failed(invocation, queue, too_large_failure(too_large), None, ctx)
            done = invocation.evolve(
                status=transition(invocation.status, Transition.COMPLETE),
                output=output,
                wake_at_ms=ctx.now_ms + ctx.retention_ms,
                fence_requested=False,
                finished_at_ms=ctx.now_ms,
                deployment=None,
            )
            return Decision(done, _release(queue), (*_capacity_back(invocation), *_finished(done)))
        case AttemptFailed(failure=failure, retry_after_ms=retry_after_ms, hold_queue=hold):
            if retry_after_ms is not None:
                # From the wire: any long. Bounded, so that a timer stays a valid time.
                retry_after_ms = min(max(retry_after_ms, 0), MAX_RETRY_AFTER_MS)
            if hold and retry_after_ms is not None:
                until = ctx.now_ms + retry_after_ms
                queue = replace(queue, paused_until_ms=max(queue.paused_until_ms or 0, until))
            return _failed(invocation, queue, cut_failure(failure, ctx.limits), retry_after_ms, ctx)
        case AttemptFenced(reason=reason):
            failure = Failure(f"attempt {invocation.attempt} fenced: {reason}", "AttemptFenced")
            return _failed(invocation, queue, failure, None, ctx)
        case AttemptSuspended(awaiting_index=index):
            return _suspended(invocation, queue, index, ctx)
        case AttemptAlive():
            return Decision(invocation.evolve(wake_at_ms=_renewed_lease(invocation, ctx)))


def _renewed_lease(invocation: Invocation, ctx: DecisionContext) -> int | None:
    # Any report from the worker renews the lease, unless a fence is already on its way.
    return None if invocation.fence_requested else ctx.now_ms + ctx.heartbeat_timeout_ms


def _suspended(
    invocation: Invocation, queue: VirtualQueue, index: int, ctx: DecisionContext
) -> Decision:
    journal = invocation.journal
    if not (0 <= index < len(journal) and journal[index].kind is EntryKind.CALL):
        failure = Failure(
            f"attempt {invocation.attempt} suspended awaiting entry {index}, which is no "
            "call of the journal",
            "InvalidSuspension",
        )
        return _failed(invocation, queue, failure, None, ctx)
    hold = ctx.rule is not None and ctx.rule.hold_while_suspended
    suspended = invocation.evolve(
        status=transition(invocation.status, Transition.SUSPEND),
        wake_at_ms=None,
        fence_requested=False,
        deployment=None,
        awaiting_call=index,
        holds_slot=hold,
    )
    # The slot is freed for others unless the rule says the invocation keeps it.
    queue = queue if hold else _release(queue)
    given_back = _capacity_back(invocation)
    if not journal[index].is_pending_call:
        # The result came in while the attempt was still on its way out.
        return _wake(suspended, queue, given_back, ctx)
    return Decision(suspended, queue, given_back)


def _call_completed(
    invocation: Invocation | None,
    queue: VirtualQueue,
    completion: CallCompletion,
    ctx: DecisionContext,
) -> Decision:
    index = completion.entry_index
    if invocation is None or invocation.status.is_final:
        return Decision(effects=(Ignored(f"no invocation awaits call {index}"),))
    journal = invocation.journal
    if not (0 <= index < len(journal) and journal[index].is_pending_call):
        return Decision(effects=(Ignored(f"entry {index} is no call awaiting its result"),))
    done = replace(journal[index], value=completion.output, failure=completion.failure)
    if done.value is None and done.failure is None:
        done = replace(done, value=b"")  # an output, even if empty, completes the call
    others = (*journal[:index], *journal[index + 1 :])
    too_large = grown_too_large(journal_bytes(others), done, ctx.limits)
    if too_large is not None:
        # The caller cannot keep the output: it sees the call fail, and says why.
        done = replace(done, value=None, failure=too_large_failure(too_large))
    elif done.failure is not None:
        done = replace(done, failure=cut_failure(done.failure, ctx.limits))
    completed = invocation.evolve(journal=(*journal[:index], done, *journal[index + 1 :]))
    if completed.status is InvocationStatus.SUSPENDED and completed.awaiting_call == index:
        return _wake(completed, queue, (), ctx)
    return Decision(completed)


def _wake(
    suspended: Invocation, queue: VirtualQueue, effects: tuple[Effect, ...], ctx: DecisionContext
) -> Decision:
    """The awaited result is in: a new attempt replays the journal past the call."""
    woken = suspended.evolve(awaiting_call=None, holds_slot=False)
    if suspended.holds_slot:
        # Its queue slot is still its own: no admission again.
        decision = _begin(woken, queue, ctx)
    else:
        pending = woken.evolve(status=transition(woken.status, Transition.WAKE))
        decision = _enqueue_and_start(pending, queue, ctx)
    return replace(decision, effects=(*effects, *decision.effects))


def _failed(
    invocation: Invocation,
    queue: VirtualQueue,
    failure: Failure,
    retry_after_ms: int | None,
    ctx: DecisionContext,
) -> Decision:
    released = _release(queue)
    policy = ctx.handler.retry if ctx.handler is not None else DEFAULT_RETRY
    decision = (
        Exhausted(policy.on_exhausted)
        if failure.terminal
        else after_failure(policy, invocation.attempt, ctx.jitter, retry_after_ms)
    )
    base = invocation.evolve(last_failure=failure, fence_requested=False, deployment=None)
    given_back = _capacity_back(invocation)
    match decision:
        case RetryAfter(delay_ms=delay):
            backing_off = base.evolve(
                status=transition(invocation.status, Transition.BACK_OFF),
                wake_at_ms=ctx.now_ms + delay,
            )
            return Decision(backing_off, released, given_back)
        case Exhausted(then=OnExhausted.PAUSE) if not failure.terminal:
            paused = base.evolve(
                status=transition(invocation.status, Transition.EXHAUST), wake_at_ms=None
            )
            return Decision(paused, released, given_back)
        case _:
            failed = base.evolve(
                status=transition(invocation.status, Transition.FAIL),
                wake_at_ms=ctx.now_ms + ctx.retention_ms,
                finished_at_ms=ctx.now_ms,
            )
            return Decision(failed, released, (*given_back, *_finished(failed)))


def _timer(invocation: Invocation | None, queue: VirtualQueue, ctx: DecisionContext) -> Decision:
    if invocation is None or invocation.wake_at_ms is None or invocation.wake_at_ms > ctx.now_ms:
        return Decision(effects=(Ignored("timer no longer due"),))
    if invocation.status is InvocationStatus.RUNNING:
        fence = AttemptFenced(
            invocation.id,
            invocation.attempt,
            f"lease expired: no heartbeat for {ctx.heartbeat_timeout_ms} ms, or the "
            f"dispatch not taken within {ctx.lease_timeout_ms} ms",
        )
        fenced = invocation.evolve(wake_at_ms=None, fence_requested=True)
        return Decision(fenced, effects=(AppendFence(fence, invocation.request.partition_key),))
    if invocation.status.is_final:
        return Decision(forget=True)
    if invocation.status is InvocationStatus.BACKING_OFF:
        pending = invocation.evolve(
            status=transition(invocation.status, Transition.RETRY_DUE), wake_at_ms=None
        )
        return _enqueue_and_start(pending, queue, ctx)
    return Decision(effects=(Ignored(f"no timer action in status {invocation.status.value}"),))


def abandon(
    invocation: Invocation | None, queue: VirtualQueue, reason: str, ctx: DecisionContext
) -> Decision:
    """Fail the invocation with an internal error, from whatever status it is in.

    For when the runtime itself cannot go on with it (processing a record about it
    raised): one invocation fails with a result that says so, and its partition, and
    every other invocation on it, keeps going. The slots it held are given back.
    """
    if invocation is None or invocation.status.is_final:
        return Decision(effects=(Ignored("nothing to abandon"),))
    status = invocation.status
    if status is InvocationStatus.PENDING:
        queue = replace(queue, queued=max(0, queue.queued - 1))
    elif status is InvocationStatus.AWAITING_CAPACITY:
        queue = replace(_release(queue), awaiting_capacity=max(0, queue.awaiting_capacity - 1))
    elif status is InvocationStatus.RUNNING or (
        status is InvocationStatus.SUSPENDED and invocation.holds_slot
    ):
        queue = _release(queue)
    # A unit awaited is released when its grant finds the invocation gone (`_granted`).
    given_back = _capacity_back(invocation) if status is InvocationStatus.RUNNING else ()
    failed = invocation.evolve(
        status=transition(status, Transition.ABANDON),
        last_failure=cut_failure(Failure(reason, "InternalError", terminal=True), ctx.limits),
        wake_at_ms=ctx.now_ms + ctx.retention_ms,
        finished_at_ms=ctx.now_ms,
        fence_requested=False,
        deployment=None,
        awaiting_since_ms=None,
        awaiting_call=None,
        holds_slot=False,
    )
    return Decision(failed, queue, (*given_back, *_finished(failed)))


def refuse(request: InvocationRequest, failure: Failure, ctx: DecisionContext) -> Decision:
    """A new request the runtime cannot take: failed at once, without its payload (which
    may be what could not be taken), and remembered like any finished invocation."""
    stripped = replace(request, input=b"", headers=())
    failed = _refused(stripped, cut_failure(failure, ctx.limits), ctx)
    return Decision(failed, effects=_finished(failed))


def _finished(invocation: Invocation) -> tuple[Effect, ...]:
    """The result of an invocation that ended, and its caller's completion if one awaits."""
    result = _result(invocation)
    caller = invocation.request.caller
    if caller is None:
        return (EmitResult(result),)
    completion = CallCompletion(
        caller.invocation_id, caller.entry_index, result.output, result.failure
    )
    return (EmitResult(result), CompleteCall(caller, completion))


def _capacity_back(invocation: Invocation) -> tuple[Effect, ...]:
    """The unit of deployment capacity the ending attempt held, given back."""
    deployment = invocation.deployment
    return () if deployment is None else (ReleaseCapacity(deployment),)


def _release(queue: VirtualQueue) -> VirtualQueue:
    return replace(queue, running=queue.running - 1)


def _result(invocation: Invocation) -> InvocationResult:
    request = invocation.request
    completed = invocation.status is InvocationStatus.COMPLETED
    return InvocationResult(
        invocation_id=request.id,
        target=request.target,
        status=ResultStatus.COMPLETED if completed else ResultStatus.FAILED,
        output=invocation.output if completed else None,
        failure=None if completed else invocation.last_failure,
        attempts=invocation.attempt,
        created_at_ms=request.created_at_ms,
        completed_at_ms=invocation.finished_at_ms or 0,
        first_started_at_ms=invocation.first_started_at_ms,
        idempotency_key=request.idempotency_key,
    )
