"""The worker's conservative view of an attempt's lease at the scheduler.

The scheduler fences an attempt once its lease runs out: `lease_timeout` after the
dispatch until a worker reports the attempt, then `heartbeat_timeout` after the last
report (heartbeat or step) it accepted. The worker counts from earlier instants (the
dispatch record's timestamp, the moment it sent a report), minus a margin for clock
skew, so whenever the worker still holds the lease by its own count, no fence has been
written yet: a report acknowledged by then precedes any fence in the journal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class AttemptLease:
    expires_at_ms: int
    renewal_ms: int  # how long an accepted report holds the lease, less the margin

    @classmethod
    def dispatched(
        cls,
        dispatched_at_ms: int,
        *,
        lease_timeout_ms: int,
        heartbeat_timeout_ms: int,
        margin_ms: int,
    ) -> AttemptLease:
        expires_at_ms = dispatched_at_ms + lease_timeout_ms - margin_ms
        return cls(expires_at_ms, heartbeat_timeout_ms - margin_ms)

    def held_at(self, now_ms: int) -> bool:
        return now_ms < self.expires_at_ms

    def reporting(self, sent_at_ms: int) -> AttemptLease:
        """A report is sent at `sent_at_ms`. Once the scheduler reads it, the lease ends
        `renewal` after it, which may be sooner than the dispatch's lease: until the
        ack says which holds, count with the earlier end."""
        return replace(self, expires_at_ms=min(self.expires_at_ms, sent_at_ms + self.renewal_ms))

    def renewed(self, sent_at_ms: int) -> AttemptLease:
        """The report sent at `sent_at_ms` was acknowledged while the lease held."""
        return replace(self, expires_at_ms=max(self.expires_at_ms, sent_at_ms + self.renewal_ms))
