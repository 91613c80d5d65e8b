"""How long a consumer-group session lasts.

The session decides how soon the partitions of a process that died move to another
member: a dead worker's retried attempts and a dead scheduler's partitions wait for it.
Short is fast; the cluster sets the floor (`group.min.session.timeout.ms`, 6 s unless
its operators lowered it) and the ceiling.
"""

from __future__ import annotations

PREFERRED_SESSION_TIMEOUT_MS = 3_000
# Kafka's default `group.min.session.timeout.ms`: what a cluster that does not say
# (or does not let us read its configuration) is assumed to accept.
KAFKA_DEFAULT_MIN_SESSION_TIMEOUT_MS = 6_000


def session_timeout_ms(broker_min_ms: int | None, broker_max_ms: int | None) -> int:
    """The preferred session, raised to the cluster's floor and cut to its ceiling."""
    floor = KAFKA_DEFAULT_MIN_SESSION_TIMEOUT_MS if broker_min_ms is None else broker_min_ms
    chosen = max(PREFERRED_SESSION_TIMEOUT_MS, floor)
    return chosen if broker_max_ms is None else min(chosen, broker_max_ms)
