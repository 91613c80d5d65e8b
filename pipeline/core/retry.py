"""What happens after a failed attempt: another attempt after a backoff, or the end."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.core.model import OnExhausted, RetryPolicy


@dataclass(frozen=True, slots=True)
class RetryAfter:
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Exhausted:
    then: OnExhausted


RetryDecision = RetryAfter | Exhausted


def backoff_ms(policy: RetryPolicy, failed_attempt: int, jitter: float) -> int:
    """Exponential backoff with "equal jitter": between half and all of the step.

    Half the step stays fixed so that retries of one invocation never bunch up at 0,
    while the random half spreads a crowd of invocations that failed together.
    `jitter` is drawn by the caller in [0, 1) so that this stays a pure function.
    """
    exponent = max(failed_attempt - 1, 0)
    ceiling = float(policy.max_interval_ms)
    initial = float(policy.initial_interval_ms)
    # Compared in logarithms: multiplier**exponent overflows a float long before the
    # step reaches any ceiling (2.0**1025 at attempt 1026 of the default policy).
    if initial <= 0 or exponent * math.log(policy.multiplier) >= math.log(ceiling / initial):
        step = ceiling if initial > 0 else 0.0
    else:
        step = min(ceiling, initial * policy.multiplier**exponent)
    return min(int(step / 2 + step / 2 * jitter), policy.max_interval_ms)


def after_failure(
    policy: RetryPolicy, failed_attempt: int, jitter: float, retry_after_ms: int | None = None
) -> RetryDecision:
    if failed_attempt >= policy.max_attempts:
        return Exhausted(policy.on_exhausted)
    if retry_after_ms is not None:
        return RetryAfter(max(retry_after_ms, 0))
    return RetryAfter(backoff_ms(policy, failed_attempt, jitter))
