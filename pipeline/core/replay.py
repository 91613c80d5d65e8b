"""The replay check: does the handler still take the steps its journal recorded?

A handler is re-run from the top on every attempt. Each durable step it takes asks this
module for the entry at its index: a recorded entry (same kind, same name) is the
step's outcome and must not be executed again; the index just past the journal is a
new step to execute; anything else means the code changed under a running invocation,
and carrying on would attach recorded outcomes to the wrong steps.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core.model import EntryKind, JournalEntry
from pipeline.errors import NonDeterminismError


class JournalMismatch(NonDeterminismError):
    """The step at `index` is not the one the journal recorded there.

    Carries both sides so that the message (and a debugger) shows what changed.
    """

    def __init__(
        self,
        index: int,
        *,
        recorded_kind: EntryKind,
        recorded_name: str,
        new_kind: EntryKind,
        new_name: str,
    ) -> None:
        super().__init__(
            f"journal mismatch at index {index}: the journal recorded "
            f"{recorded_kind.value} {recorded_name!r}, the handler now takes "
            f"{new_kind.value} {new_name!r}; deploy the handler code that wrote this "
            "journal to resume the invocation"
        )
        self.index = index
        self.recorded_kind = recorded_kind
        self.recorded_name = recorded_name
        self.new_kind = new_kind
        self.new_name = new_name


def expect_entry(
    journal: Sequence[JournalEntry], index: int, kind: EntryKind, name: str
) -> JournalEntry | None:
    """The recorded outcome of step `index`, or None when the step is new.

    Every index from `len(journal)` on is new: the attempt executes it. Raises
    `JournalMismatch` when the journal recorded a different kind or name at `index`.
    """
    if index < 0:
        raise ValueError(f"step index {index} is negative: steps are numbered from 0")
    if index >= len(journal):
        return None
    recorded = journal[index]
    if recorded.index != index:
        # The scheduler keeps journals dense; an entry out of place is corruption, and
        # replaying it would hand one step another step's outcome.
        raise ValueError(
            f"journal entry at position {index} carries index {recorded.index}: "
            "the journal is not dense"
        )
    if recorded.kind != kind or recorded.name != name:
        raise JournalMismatch(
            index,
            recorded_kind=recorded.kind,
            recorded_name=recorded.name,
            new_kind=kind,
            new_name=name,
        )
    return recorded
