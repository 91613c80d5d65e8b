"""When a local store may resume a changelog from where it stopped, and when it must read
the changelog from the start again.

A local store (the scheduler's partitions, the Admin API's replica) is a cache of a
compacted changelog; it saves, with its rows, the offset it has read to. Resuming from
that offset is right only while the changelog still holds every record after it: a
compacted topic drops tombstones after `delete.retention.ms` (one day by default), so a
store that stopped longer ago may have missed deletions.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_AGE_MS = 12 * 3600 * 1000
"""Half of Kafka's default `delete.retention.ms`: older saved positions are not resumed."""


@dataclass(frozen=True, slots=True)
class SavedPosition:
    """Where a local store had read a changelog partition to, and when it saved that."""

    changelog: str
    offset: int
    saved_at_ms: int
    layout: int


def restart_reason(
    saved: SavedPosition | None, changelog: str, layout: int, high: int, now_ms: int
) -> str | None:
    """Why the store must read `changelog` from the start; None: resume at `saved.offset`.

    `high` is the partition's high watermark, `layout` the version of the store's own
    derived rows that this program writes.
    """
    if saved is None:
        return "nothing saved"
    if saved.changelog != changelog:
        return f"saved for {saved.changelog!r}, not {changelog!r}"
    if saved.layout != layout:
        return f"derived rows of layout {saved.layout}, this version keeps layout {layout}"
    if saved.offset > high:
        return f"saved offset {saved.offset} is past the end {high} (topic recreated?)"
    # Age matters only when records follow the position. Every changelog write is
    # transactional, so a committed record after it comes with a marker: at least two
    # offsets; one offset more is just the marker of the saved batch itself.
    behind = high - saved.offset > 1
    if behind and now_ms - saved.saved_at_ms > MAX_AGE_MS:
        return f"saved more than {MAX_AGE_MS} ms ago: deletions since may be compacted away"
    return None
