"""The worker's conservative view of an attempt's lease at the scheduler.

The scheduler fences an attempt once `lease_timeout` passes after the dispatch or after
the last journal entry it accepted. The worker counts from earlier instants (the
dispatch record's timestamp, the moment it sent an entry), minus a margin for clock
skew, so whenever the worker still holds the lease by its own count, no fence has been
written yet: an entry acknowledged by then precedes any fence in the journal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class AttemptLease:
    granted_at_ms: int
    timeout_ms: int
    margin_ms: int

    @property
    def expires_at_ms(self) -> int:
        return self.granted_at_ms + self.timeout_ms - self.margin_ms

    def held_at(self, now_ms: int) -> bool:
        return now_ms < self.expires_at_ms

    def renewed(self, sent_at_ms: int) -> AttemptLease:
        """After the scheduler accepts an entry sent at `sent_at_ms`, it renews from later."""
        return replace(self, granted_at_ms=max(self.granted_at_ms, sent_at_ms))
