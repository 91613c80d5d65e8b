"""The scheduler's state as its changelog records it, replicated into a local RocksDB.

The Admin API and the CLI read invocations, queues and loads from here. Rows are the
changelog's values, undecoded, under `r{changelog key}`; the indexes of
`invocation_index` make lookups keyed and lists paginated, so memory does not grow
with the number of invocations retained, and no request scans them all.

Each batch of records is written with the offsets it reaches (`m{partition}`) in one
RocksDB write. A replica with a stable directory (an instance id) resumes from those
offsets after a restart instead of reading the whole changelog again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from rocksdict import Rdict, WriteBatch, WriteOptions

from pipeline.codec.records import WireCodec
from pipeline.codec.state_keys import (
    RowFamily,
    deployment_key,
    invocation_key,
    parse_changelog_key,
    queue_key,
    scope_key,
)
from pipeline.core.checkpoint import SavedPosition, restart_reason
from pipeline.core.deployment import DeploymentLoad
from pipeline.core.fair_share import ScopeLoad
from pipeline.core.model import QueueId
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.errors import DecodeError
from pipeline.kafka.config import ClusterConfig
from pipeline.runtime.clock import wall_clock_ms
from pipeline.runtime.state_store import StateStore, default_state_root
from pipeline.views.compacted import CompactedTopicView, TopicRecord
from pipeline.views.invocation_index import (
    ENTRY,
    MAX_SCANNED,
    IndexEntry,
    InvocationPage,
    InvocationQuery,
    awaiting_prefix,
    encode_cursor,
    index_entry,
    waiting_prefix,
)
from topics import TopicNames

log = logging.getLogger(__name__)

LAYOUT = 1
_ROW = b"r"
_POSITION = b"m"


class SchedulerStateView(CompactedTopicView):
    """Invocations, virtual queues and loads as the scheduler's changelog last recorded
    them, on disk under `state_root` (by default the user's state directory).

    With `instance_id` the directory is kept and reused by the next start of the same
    instance; without, it is private to this process and deleted when it stops.
    """

    def __init__(
        self,
        cluster: ClusterConfig,
        names: TopicNames,
        codec: WireCodec,
        state_root: Path | None = None,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(cluster, names.scheduler_state)
        self._codec = codec
        root = state_root or default_state_root()
        self._store = StateStore(root, names.scheduler_state, instance_id, role="views")
        self._db: Rdict = self._store.db
        # The replica is a cache of the changelog, and each batch carries the offsets it
        # reaches: a crash loses the newest batches and their offsets together, which the
        # next start reads again. So no write-ahead log.
        no_wal = WriteOptions()
        # rocksdict's stub declares a method; at runtime it is a property.
        no_wal.disable_wal = True  # type: ignore[method-assign, assignment]
        self._db.set_write_options(no_wal)
        self._saved: dict[int, int] = {}
        self._closed = False

    def stop(self) -> None:
        super().stop()
        if not self._closed:
            self._closed = True
            self._store.close()

    # -- reading ---------------------------------------------------------------------

    def invocation(self, invocation_id: str) -> Invocation | None:
        value = self._db.get(_ROW + invocation_key(invocation_id).encode())
        return None if value is None else self._codec.decode_invocation_state(value)

    def list_invocations(self, query: InvocationQuery) -> InvocationPage:
        prefix = query.index_prefix()
        start = prefix if query.after is None else prefix + query.after
        found: list[Invocation] = []
        scanned = 0
        for key in self._keys_from(start, prefix):
            raw_id = key[len(prefix) :]
            if raw_id == query.after:
                continue
            invocation_id = raw_id.decode()
            scanned += 1
            raw_entry = self._db.get(ENTRY + invocation_id.encode())
            if raw_entry is not None and query.matches(IndexEntry.decode(raw_entry)):
                invocation = self.invocation(invocation_id)
                if invocation is not None:
                    found.append(invocation)
            if len(found) == query.limit or scanned >= MAX_SCANNED:
                return InvocationPage(tuple(found), encode_cursor(raw_id))
        return InvocationPage(tuple(found), None)

    def ahead_of(self, invocation: Invocation) -> int:
        """How many invocations the scheduler takes before this pending or awaiting one:
        in its queue, or among those awaiting its deployment on its partition."""
        raw_entry = self._db.get(ENTRY + invocation.id.encode())
        if raw_entry is None:
            return 0
        entry = IndexEntry.decode(raw_entry)
        if entry.waiting is not None:
            mine, prefix = entry.waiting + invocation.id.encode(), waiting_prefix(entry.waiting)
        elif entry.awaiting is not None:
            mine, prefix = entry.awaiting, awaiting_prefix(entry.awaiting)
        else:
            return 0
        ahead = 0
        for key in self._keys_from(prefix, prefix):
            if key >= mine:
                break
            ahead += 1
        return ahead

    def queue(self, queue_id: QueueId) -> VirtualQueue | None:
        value = self._db.get(_ROW + queue_key(queue_id).encode())
        return None if value is None else self._codec.decode_queue_state(value)

    def queues(self) -> list[VirtualQueue]:
        prefix = _ROW + RowFamily.QUEUE.value.encode()
        queues = [
            self._codec.decode_queue_state(value) for _, value in self._items_from(prefix, prefix)
        ]
        return sorted(queues, key=lambda queue: str(queue.id))

    def scope_load(self, scope: str) -> ScopeLoad | None:
        value = self._db.get(_ROW + scope_key(scope).encode())
        return None if value is None else self._codec.decode_scope_load(value)

    def deployment_load(self, deployment: str) -> DeploymentLoad | None:
        value = self._db.get(_ROW + deployment_key(deployment).encode())
        return None if value is None else self._codec.decode_deployment_load(value)

    def _keys_from(self, start: bytes, prefix: bytes) -> Iterator[bytes]:
        for key, _ in self._items_from(start, prefix):
            yield key

    def _items_from(self, start: bytes, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(start)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                return
            yield key, it.value()
            it.next()

    # -- folding ---------------------------------------------------------------------

    def _start_offsets(self, ends: Mapping[int, int]) -> Mapping[int, int]:
        now = wall_clock_ms()
        saved = {
            int.from_bytes(key[1:], "big"): _decode_position(value)
            for key, value in self._items_from(_POSITION, _POSITION)
        }
        reasons = {
            partition: restart_reason(saved.get(partition), self.topic, LAYOUT, end, now)
            for partition, end in ends.items()
        }
        if set(saved) <= set(ends) and not any(reasons.values()):
            self._saved = {p: position.offset for p, position in saved.items()}
            log.info("view of %s resumes from %s", self.topic, self._saved)
            return self._saved
        if saved:
            why = next((r for r in reasons.values() if r), "the topic has fewer partitions")
            log.info("view of %s reads the changelog again: %s", self.topic, why)
        self._db.delete_range(b"\x00", b"\xff")
        self._saved = {}
        return {}

    def _fold(self, records: Sequence[TopicRecord]) -> None:
        batch = WriteBatch(raw_mode=True)
        entries: dict[str, IndexEntry | None] = {}
        for record in records:
            try:
                self._fold_record(batch, entries, record)
            except DecodeError as exc:
                log.warning(
                    "view of %s: skipping record %r at partition %d offset %d: %s",
                    self.topic,
                    record.key,
                    record.partition,
                    record.offset,
                    exc,
                )
        now = wall_clock_ms()
        for partition, offset in self._positions.items():
            if self._saved.get(partition) != offset:
                position = SavedPosition(self.topic, offset, now, LAYOUT)
                batch.put(_POSITION + partition.to_bytes(2, "big"), _encode_position(position))
                self._saved[partition] = offset
        if len(batch):
            self._db.write(batch)

    def _fold_record(
        self, batch: WriteBatch, entries: dict[str, IndexEntry | None], record: TopicRecord
    ) -> None:
        family, name = parse_changelog_key(record.key)
        row = _ROW + record.key.encode()
        if family is not RowFamily.INVOCATION:
            if record.value is not None:
                self._decode(family, record.value)  # refuse what readers could not decode
                batch.put(row, record.value)
            else:
                batch.delete(row)
            return
        new = None
        if record.value is not None:
            new = index_entry(self._codec.decode_invocation_facets(record.value), record.partition)
        old = entries[name] if name in entries else self._stored_entry(name)
        old_rows = frozenset() if old is None else old.rows(name)
        new_rows = frozenset() if new is None else new.rows(name)
        for key in old_rows - new_rows:
            batch.delete(key)
        for key in new_rows - old_rows:
            batch.put(key, b"")
        entries[name] = new
        if new is None or record.value is None:
            batch.delete(row)
            batch.delete(ENTRY + name.encode())
        else:
            batch.put(row, record.value)
            batch.put(ENTRY + name.encode(), new.encode())

    def _stored_entry(self, invocation_id: str) -> IndexEntry | None:
        value = self._db.get(ENTRY + invocation_id.encode())
        return None if value is None else IndexEntry.decode(value)

    def _decode(self, family: RowFamily, value: bytes) -> object:
        match family:
            case RowFamily.QUEUE:
                return self._codec.decode_queue_state(value)
            case RowFamily.SCOPE:
                return self._codec.decode_scope_load(value)
            case RowFamily.DEPLOYMENT:
                return self._codec.decode_deployment_load(value)
            case RowFamily.INVOCATION:
                return self._codec.decode_invocation_state(value)

    def _apply(self, key: str, value: bytes | None) -> None:
        raise NotImplementedError("folded in batches by _fold")


def _encode_position(position: SavedPosition) -> bytes:
    return json.dumps(
        {
            "changelog": position.changelog,
            "offset": position.offset,
            "saved_at_ms": position.saved_at_ms,
            "layout": position.layout,
        }
    ).encode()


def _decode_position(value: bytes) -> SavedPosition:
    fields = json.loads(value)
    return SavedPosition(
        fields["changelog"], fields["offset"], fields["saved_at_ms"], fields["layout"]
    )
