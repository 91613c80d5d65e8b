"""The one error root of `pipeline`, split by what a retry would do.

`TerminalError` and `ValidationError` will fail the same way again; `RetryableError`
may succeed later. Suspension and other control flow are `BaseException`s elsewhere so
that a handler's `except Exception` cannot swallow them.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error raised by pipeline."""


class TerminalError(PipelineError):
    """Fails the invocation at once: retrying cannot help.

    Raised by handlers for business failures; the message reaches the result.
    """

    def __init__(self, message: str, *, code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class PayloadTooLarge(TerminalError):
    """A request, output or step is larger than the runtime's limits allow; the message
    names the size and the limit (`pipeline.core.payload`)."""


class RetryableError(PipelineError):
    """The operation may succeed if tried again later."""

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_ms = retry_after_ms


class RateLimited(RetryableError):
    """A downstream said "too many requests": retry after `retry_after_ms`, and hold
    every other start of the invocation's virtual queue until then too."""

    def __init__(self, message: str = "rate limited downstream", *, retry_after_ms: int) -> None:
        if retry_after_ms < 0:
            raise ValueError(f"retry_after_ms {retry_after_ms} must be >= 0")
        super().__init__(message, retry_after_ms=retry_after_ms)


class NonDeterminismError(RetryableError):
    """Replay found a journal entry that the handler code no longer produces.

    Retryable: deploying the handler code that wrote the journal resumes the invocation.
    """


class ValidationError(PipelineError):
    """Input that will never be accepted as it is; the message names the bad value."""


class NotFoundError(ValidationError):
    """A named thing (invocation, service, handler) does not exist."""


class DecodeError(ValidationError):
    """A record's bytes are not a valid record of the topic's contract."""


class TooLarge(ValidationError):
    """A value is larger than where it must go can hold; the message names both sizes."""


class ConflictError(ValidationError):
    """The request disagrees with what already exists (e.g. a topic's partition count)."""


class LeaseLost(BaseException):
    """The attempt's lease may have expired: the attempt stops without another step.

    A `BaseException` so that a handler's `except Exception` cannot swallow it; the
    scheduler fences the attempt and runs the next one from the journal.
    """


class Suspended(BaseException):
    """The handler awaits a call whose result is not in yet: the attempt ends here.

    A `BaseException` so that a handler's `except Exception` cannot swallow it. The
    worker reports the attempt suspended; the scheduler starts a new attempt, replaying
    the journal, once the result of the call at `awaiting_index` is in.
    """

    def __init__(self, awaiting_index: int) -> None:
        super().__init__(f"suspended until the result of call {awaiting_index} is in")
        self.awaiting_index = awaiting_index
