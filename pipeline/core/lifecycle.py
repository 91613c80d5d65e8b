"""Invocation lifecycle: one enum and one transition table.

Every status change in the scheduler goes through `transition`, so an illegal move is
a bug that raises instead of a state that silently drifts.
"""

from __future__ import annotations

from enum import StrEnum


class InvocationStatus(StrEnum):
    PENDING = "pending"  # in its virtual queue, waiting to be admitted
    # Admitted by its queue (whose slot it holds), waiting for its deployment's cap
    AWAITING_CAPACITY = "awaiting-capacity"
    RUNNING = "running"  # an attempt is dispatched to a worker and holds a lease
    BACKING_OFF = "backing-off"  # the last attempt failed; the next waits for its timer
    PAUSED = "paused"  # retries exhausted under an on_exhausted=pause policy
    SUSPENDED = "suspended"  # awaits a call's result, with no attempt running
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (InvocationStatus.COMPLETED, InvocationStatus.FAILED)


class Transition(StrEnum):
    ADMIT = "admit"  # the queue lets the next attempt start
    RESERVE = "reserve"  # the queue admits it, and its deployment's cap must grant too
    GRANT = "grant"  # the deployment granted capacity: the attempt starts
    COMPLETE = "complete"
    FAIL = "fail"  # terminal failure or retries exhausted under fail policy
    BACK_OFF = "back-off"  # retryable failure or lease fence with attempts left
    EXHAUST = "exhaust"  # retries exhausted under pause policy
    RETRY_DUE = "retry-due"  # backoff timer fired: back into the queue
    RESUME = "resume"  # operator resumed a paused invocation
    SUSPEND = "suspend"  # the attempt ended awaiting a call's result
    WAKE = "wake"  # the awaited result is in: back into the queue
    # The runtime cannot go on with it (a record about it made the scheduler fail):
    # it fails with an internal error instead of stopping its partition.
    ABANDON = "abandon"


_S = InvocationStatus
_T = Transition

TRANSITIONS: dict[tuple[InvocationStatus, Transition], InvocationStatus] = {
    (_S.PENDING, _T.ADMIT): _S.RUNNING,
    (_S.PENDING, _T.RESERVE): _S.AWAITING_CAPACITY,
    (_S.AWAITING_CAPACITY, _T.GRANT): _S.RUNNING,
    (_S.RUNNING, _T.COMPLETE): _S.COMPLETED,
    (_S.RUNNING, _T.FAIL): _S.FAILED,
    (_S.RUNNING, _T.BACK_OFF): _S.BACKING_OFF,
    (_S.RUNNING, _T.EXHAUST): _S.PAUSED,
    (_S.BACKING_OFF, _T.RETRY_DUE): _S.PENDING,
    (_S.PAUSED, _T.RESUME): _S.PENDING,
    (_S.PAUSED, _T.FAIL): _S.FAILED,
    (_S.RUNNING, _T.SUSPEND): _S.SUSPENDED,
    (_S.SUSPENDED, _T.WAKE): _S.PENDING,
    # Suspended holding its queue's slot (hold_while_suspended): no admission again.
    (_S.SUSPENDED, _T.ADMIT): _S.RUNNING,
    (_S.SUSPENDED, _T.RESERVE): _S.AWAITING_CAPACITY,
    **{
        (status, _T.ABANDON): _S.FAILED
        for status in (
            _S.PENDING,
            _S.AWAITING_CAPACITY,
            _S.RUNNING,
            _S.BACKING_OFF,
            _S.PAUSED,
            _S.SUSPENDED,
        )
    },
}


class IllegalTransition(Exception):
    """A bug in the scheduler core: the state machine was asked for a move it lacks."""

    def __init__(self, status: InvocationStatus, transition: Transition) -> None:
        super().__init__(f"no transition {transition.value!r} from status {status.value!r}")
        self.status = status
        self.transition = transition


def transition(status: InvocationStatus, move: Transition) -> InvocationStatus:
    try:
        return TRANSITIONS[(status, move)]
    except KeyError:
        raise IllegalTransition(status, move) from None


def state_diagram() -> str:
    """Mermaid diagram of the table, for the README."""
    lines = ["stateDiagram-v2", "    [*] --> pending"]
    for (source, move), target in TRANSITIONS.items():
        lines.append(f"    {source.value} --> {target.value}: {move.value}")
    lines += ["    completed --> [*]", "    failed --> [*]"]
    return "\n".join(lines)
