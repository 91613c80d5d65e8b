"""Errors the SDK raises into handler code, under the one root in `pipeline.errors`."""

from __future__ import annotations

from pipeline.errors import RetryableError


class AttemptBroken(RetryableError):
    """An earlier step of this attempt failed or was not journaled, so no later step can be.

    The journal must stay dense and in step order: a step journaled after a gap would be
    replayed against the wrong index on the next attempt. The attempt has to be retried,
    which re-runs the failed step first.
    """

    def __init__(self, index: int, name: str, *, failed_index: int, failed_name: str) -> None:
        super().__init__(
            f"step {index} {name!r} cannot run: step {failed_index} {failed_name!r} failed "
            "earlier in this attempt and was not journaled; the attempt must be retried"
        )
        self.index = index
        self.name = name
        self.failed_index = failed_index
        self.failed_name = failed_name
