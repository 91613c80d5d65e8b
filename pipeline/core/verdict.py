"""What the scheduler decides for the head of a virtual queue: it may start, or what
holds it back until when. Kept with the queue's state, so that what an operator reads
is what the scheduler decided."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


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
    """What holds the head back; `until_ms` is when to look again (None: on a change).

    `decided_at_ms` says when the scheduler decided it, once kept with a queue's state;
    two verdicts that differ only in it are the same verdict.
    """

    blocker: Blocker
    until_ms: int | None = None
    rule_id: str | None = None
    level: LimitLevel = LimitLevel.QUEUE
    decided_at_ms: int | None = field(default=None, compare=False)


Admission = Admit | Blocked

ADMIT = Admit()
