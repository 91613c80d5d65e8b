"""The scheduler's state of one partition: committed rows in RocksDB, this batch above.

The core hands back new frozen values; this container stores them. Reads see the
current batch's writes first, then a small cache of decoded committed rows, then
RocksDB. A batch's writes reach RocksDB only in `commit`, which the processor calls
after the Kafka transaction carrying the same changes to the changelog committed, so
the local store never holds state Kafka could still abort. `discard` drops a batch.

Row layout, every key after the partition's two-byte prefix:

    m                            checkpoint: next changelog offset, rules version, time
    i {id}                       invocation state (the changelog value)
    q {queue}                    queue state (the changelog value)
    s {scope}                    scope load (the changelog value)
    d {deployment}               deployment load, on its home partition (the changelog value)
    w {queue} 0x00 {prio}{seq}   -> id: waiting order of a queue (derived)
    t {at_ms}{id}                invocation timers (derived)
    k {at_ms}{queue}             when a throttled queue may start again (derived)
    a {deployment} 0x00 {prio}{since_ms}{id}
                                 -> id: invocations awaiting deployment capacity (derived)
    f {scope} 0x00 {vfinish}{limit key}
                                 a queue of a scope with work waiting, in fair-share
                                 order (derived; vfinish as a big-endian double)

Derived rows are kept in step with the state rows they come from, so nothing needs
rebuilding in memory on restart: recovery reads the changelog from the checkpoint on.
A store written with another `LAYOUT` of derived rows is restored in full.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

from rocksdict import WriteBatch

from pipeline.codec.records import WireCodec
from pipeline.codec.state_keys import (
    InvocationFacets,
    RowFamily,
    awaiting_order,
    deployment_key,
    instant,
    invocation_key,
    parse_changelog_key,
    queue_key,
    scope_key,
    waiting_order,
)
from pipeline.core.deployment import DeploymentLoad
from pipeline.core.fair_share import ScopeLoad, arrival_tag
from pipeline.core.model import QueueId
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.errors import DecodeError
from pipeline.runtime.state_store import StateStore, partition_prefix

log = logging.getLogger(__name__)

LAYOUT = 3  # 2: the `a` and `o` indexes; 3: `f` in place of `o`
_CACHE_ROWS = 10_000
# Stored queues a partition-wide pump pass looks at per batch: ~0.1 s of work.
FULL_PASS_SLICE = 2_000
_FLOORS = 50_000
_PRUNE_MAX = 1_000

_T = TypeVar("_T")
_Row = Invocation | VirtualQueue | ScopeLoad | DeploymentLoad


@dataclass(frozen=True, slots=True)
class Checkpoint:
    changelog: str
    offset: int
    rules_version: int
    saved_at_ms: int
    layout: int = LAYOUT


@dataclass(frozen=True, slots=True)
class ChangelogWrite:
    key: str
    value: bytes | None


class PartitionState:
    def __init__(self, store: StateStore, partition: int, codec: WireCodec) -> None:
        self.partition = partition
        self._db = store.db
        self._codec = codec
        self._p = partition_prefix(partition)
        self._cache: OrderedDict[bytes, _Row] = OrderedDict()
        self._invocations: dict[str, Invocation | None] = {}
        self._queues: dict[QueueId, VirtualQueue | None] = {}
        self._scopes: dict[str, ScopeLoad | None] = {}
        self._deployments: dict[str, DeploymentLoad | None] = {}
        self._index: dict[bytes, bytes | None] = {}
        # Changelog values read while restoring, written to RocksDB as they are.
        self._raw: dict[str, bytes | None] = {}
        self._created: set[bytes] = set()
        self._new_waiting: dict[QueueId, list[bytes]] = {}
        self._new_awaiting: dict[str, list[bytes]] = {}
        self._new_timers: list[bytes] = []
        self._new_wakes: list[bytes] = []
        # Per index prefix, a key below which nothing live is stored. Consumed entries
        # leave tombstones at the front of an index until RocksDB compacts them away; a
        # seek from the bare prefix would wade through all of them (1 ms per 20,000).
        self._floors: OrderedDict[bytes, bytes] = OrderedDict()
        self._touched_queues: set[QueueId] = set()
        # True until every queue was looked at under the rules in force: after new
        # rules, or when the local store could not say which rules it was pumped under.
        # The pass runs a slice per batch, from `_full_pass_from` on.
        self._full_pass_needed = True
        self._full_pass_from: bytes | None = None
        # Scopes whose every queue must be looked at: their rules changed.
        self._scopes_to_pump: set[str] = set()

    def pump_after_rule_change(self, scopes: frozenset[str] | None) -> None:
        """Look at every waiting queue of `scopes` (None: of the partition) next pump."""
        if scopes is None:
            self.full_pump_needed = True
        else:
            self._scopes_to_pump |= scopes

    @property
    def full_pump_needed(self) -> bool:
        return self._full_pass_needed

    @full_pump_needed.setter
    def full_pump_needed(self, needed: bool) -> None:
        self._full_pass_needed = needed
        self._full_pass_from = None  # a pass owed anew starts from the first queue

    @property
    def pump_pending(self) -> bool:
        return self._full_pass_needed or bool(self._scopes_to_pump)

    # -- reading ---------------------------------------------------------------------

    def invocation(self, invocation_id: str) -> Invocation | None:
        if invocation_id in self._invocations:
            return self._invocations[invocation_id]
        return self._committed(
            self._p + b"i" + invocation_id.encode(), self._codec.decode_invocation_state
        )

    def queue(self, queue_id: QueueId) -> VirtualQueue:
        return self.queue_or_none(queue_id) or VirtualQueue(queue_id)

    def queue_or_none(self, queue_id: QueueId) -> VirtualQueue | None:
        if queue_id in self._queues:
            return self._queues[queue_id]
        return self._committed(self._queue_key(queue_id), self._codec.decode_queue_state)

    def scope_load(self, scope: str) -> ScopeLoad:
        if scope in self._scopes:
            return self._scopes[scope] or ScopeLoad(scope)
        stored = self._committed(self._p + b"s" + scope.encode(), self._codec.decode_scope_load)
        return stored or ScopeLoad(scope)

    def deployment_load(self, deployment: str) -> DeploymentLoad:
        if deployment in self._deployments:
            return self._deployments[deployment] or DeploymentLoad(deployment)
        stored = self._committed(
            self._p + b"d" + deployment.encode(), self._codec.decode_deployment_load
        )
        return stored or DeploymentLoad(deployment)

    def deployments_homed(self) -> list[str]:
        """The deployments whose capacity this partition counts, with units out or asked."""
        prefix = self._p + b"d"
        found = {key[3:].decode() for key in self._scan(prefix, prefix)}
        found.update(d for d, load in self._deployments.items() if load is not None)
        return sorted(found)

    def queues_of_scope(self, scope: str) -> Iterator[VirtualQueue]:
        """The queues of `scope` with work waiting, in fair-share order (`fair_order`)
        as of this call: a queue changed while this runs is not seen again.

        Read from the `f` index rather than the queue rows: those are rewritten by
        every batch that touches them, and a scan would wade through every version.
        """
        prefix = self._p + b"f" + scope.encode() + b"\x00"
        batch = [(k, v) for k, v in self._index.items() if k.startswith(prefix)]
        new = sorted(k for k, v in batch if v is not None)
        deleted = {k for k, v in batch if v is None}
        for key in heapq.merge(self._live_stored(prefix, deleted), new):
            queue = self.queue_or_none(QueueId(scope, key[len(prefix) + 8 :].decode()))
            if queue is not None and queue.queued:
                yield queue

    def _live_stored(self, prefix: bytes, deleted: set[bytes]) -> Iterator[bytes]:
        """The stored keys under `prefix` this batch did not delete, in order; moves the
        prefix's floor up to the first of them (or past all, when there is none)."""
        first = True
        for key in self._scan(self._floor(prefix), prefix):
            if key in deleted:
                continue
            if first:
                self._set_floor(prefix, key)
                first = False
            yield key
        if first:
            self._set_floor(prefix, prefix + b"\xff")

    def _scan(self, start: bytes, prefix: bytes) -> Iterator[bytes]:
        """The stored keys under `prefix`, in order, from `start` on."""
        iterator = self._db.iter()
        iterator.seek(start)
        while iterator.valid():
            key: bytes = iterator.key()
            if not key.startswith(prefix):
                return
            yield key
            iterator.next()

    def _committed(self, key: bytes, decode: Callable[[bytes], _T]) -> _T | None:
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached  # type: ignore[return-value]
        raw = self._db.get(key)
        if raw is None:
            return None
        value = decode(raw)
        self._remember(key, value)  # type: ignore[arg-type]
        return value

    def _remember(self, key: bytes, value: _Row) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        if len(self._cache) > _CACHE_ROWS:
            self._cache.popitem(last=False)

    def waiting_head(self, queue_id: QueueId) -> str | None:
        """The pending invocation that starts next in this queue, if any."""
        prefix = self._p + b"w" + str(queue_id).encode() + b"\x00"
        return self._head(prefix, self._new_waiting.get(queue_id, []))

    def awaiting_head(self, deployment: str) -> str | None:
        """The invocation that takes the next unit of `deployment`'s capacity, if any."""
        prefix = self._p + b"a" + deployment.encode() + b"\x00"
        return self._head(prefix, self._new_awaiting.get(deployment, []))

    def _head(self, prefix: bytes, new_keys: list[bytes]) -> str | None:
        stored = self._first_live(prefix)
        new = self._first_new(new_keys)
        candidates = [k for k in (stored, new) if k is not None]
        if not candidates:
            return None
        key = min(candidates)
        value = self._index.get(key) or self._db.get(key)
        return None if value is None else bytes(value).decode()

    def _first_live(self, prefix: bytes) -> bytes | None:
        """The first stored key under `prefix` that this batch did not delete."""
        for key in self._scan(self._floor(prefix), prefix):
            if not (key in self._index and self._index[key] is None):
                self._set_floor(prefix, key)
                return key
        # Nothing live: keys written later lower the floor again when committed.
        self._set_floor(prefix, prefix + b"\xff")
        return None

    def _floor(self, prefix: bytes) -> bytes:
        floor = self._floors.get(prefix)
        if floor is None:
            return prefix
        self._floors.move_to_end(prefix)
        return floor

    def _set_floor(self, prefix: bytes, key: bytes) -> None:
        self._floors[prefix] = key
        self._floors.move_to_end(prefix)
        if len(self._floors) > _FLOORS:
            self._floors.popitem(last=False)

    def _lower_floor(self, prefix: bytes, key: bytes) -> None:
        floor = self._floors.get(prefix)
        if floor is not None and key < floor:
            self._floors[prefix] = key

    def _first_new(self, heap: list[bytes]) -> bytes | None:
        while heap and self._index.get(heap[0]) is None:
            heapq.heappop(heap)
        return heap[0] if heap else None

    # -- writing ---------------------------------------------------------------------

    def put_invocation(self, invocation: Invocation) -> None:
        self._reindex(self.invocation(invocation.id), invocation)
        self._invocations[invocation.id] = invocation

    def forget_invocation(self, invocation_id: str) -> None:
        self._reindex(self.invocation(invocation_id), None)
        self._invocations[invocation_id] = None

    def put_queue(self, queue: VirtualQueue, now_ms: int) -> None:
        stored = None if queue.is_idle_at(now_ms) else queue
        if stored is not None and not (stored.queued or stored.running):
            # Kept only for its rate debt or a hold: nothing would touch it again, so
            # look at it when that ends, and `pump` drops it (idle queues cost nothing).
            until = max(math.ceil(stored.rate_tat_ms), stored.paused_until_ms or 0)
            self.wake_queue_at(queue.id, until)
        if queue.id.scope:
            before = self.queue_or_none(queue.id)
            load = self.scope_load(queue.id.scope)
            if before is None and stored is not None:
                stored = replace(stored, vfinish=arrival_tag(load))
            self.put_scope(load.counted(before, stored), now_ms)
            self._reindex_queue(before, stored)
        self._queues[queue.id] = stored
        self._touched_queues.add(queue.id)

    def _reindex_queue(self, before: VirtualQueue | None, after: VirtualQueue | None) -> None:
        queue = after or before
        if queue is None or not queue.id.scope:
            return
        old, new = _fair_key(self._p, before), _fair_key(self._p, after)
        if old != new:
            self._unindex(old)
            if new is not None:
                self._index_new(new, "")

    def put_scope(self, load: ScopeLoad, now_ms: int) -> None:
        self._scopes[load.scope] = None if load.is_idle_at(now_ms) else load

    def put_deployment_load(self, load: DeploymentLoad) -> None:
        self._deployments[load.deployment] = None if load.is_idle else load

    def _reindex(self, old: Invocation | None, new: Invocation | None) -> None:
        old_waiting, new_waiting = self._waiting_key(old), self._waiting_key(new)
        if old_waiting != new_waiting:
            self._unindex(old_waiting)
            if new_waiting is not None and new is not None:
                # New: a waiting key carries the queue sequence number taken on entry.
                self._index_new(new_waiting, new.id)
                heapq.heappush(self._new_waiting.setdefault(new.queue_id, []), new_waiting)
        old_awaiting, new_awaiting = self._awaiting_key(old), self._awaiting_key(new)
        if old_awaiting != new_awaiting:
            self._unindex(old_awaiting)
            if new_awaiting is not None and new is not None and new.deployment is not None:
                self._index_new(new_awaiting, new.id)
                heapq.heappush(self._new_awaiting.setdefault(new.deployment, []), new_awaiting)
        # A timer row is not deleted when its invocation's wake time moves on: a delete
        # amid the index leaves a tombstone that every later seek wades through. Stale
        # rows are dropped when they reach the front (`pop_due`, `next_wake_ms`).
        # The new row is set even when unchanged: `pop_due` deleted it, and an
        # invocation that keeps its wake time must keep its timer.
        new_timer = self._timer_key(new)
        if new_timer is not None:
            self._index[new_timer] = b""
            heapq.heappush(self._new_timers, new_timer)

    def _unindex(self, key: bytes | None) -> None:
        if key in self._created:
            # Never stored, so it needs no delete: most invocations wait for no batch
            # at all, and each delete would leave a tombstone behind.
            del self._index[key]
        elif key is not None:
            self._index[key] = None

    def _index_new(self, key: bytes, invocation_id: str) -> None:
        if key not in self._index:
            # Not a stored row this batch deletes: written nowhere yet.
            self._created.add(key)
        self._index[key] = invocation_id.encode()

    def _awaiting_key(self, invocation: Invocation | None) -> bytes | None:
        order = None if invocation is None else awaiting_order(InvocationFacets.of(invocation))
        return None if order is None else self._p + order

    def _waiting_key(self, invocation: Invocation | None) -> bytes | None:
        order = None if invocation is None else waiting_order(InvocationFacets.of(invocation))
        return None if order is None else self._p + order

    def _timer_key(self, invocation: Invocation | None) -> bytes | None:
        if invocation is None or invocation.wake_at_ms is None:
            return None
        return self._p + b"t" + instant(invocation.wake_at_ms) + invocation.id.encode()

    def _queue_key(self, queue_id: QueueId) -> bytes:
        return self._p + b"q" + str(queue_id).encode()

    # -- timers and pumping ----------------------------------------------------------

    def wake_queue_at(self, queue_id: QueueId, at_ms: int) -> None:
        key = self._p + b"k" + instant(at_ms) + str(queue_id).encode()
        self._index[key] = b""
        heapq.heappush(self._new_wakes, key)

    def _pop_due_keys(self, tag: bytes, new: list[bytes], now_ms: int) -> list[bytes]:
        prefix = self._p + tag
        upto = prefix + instant(now_ms) + b"\xff"
        due: list[bytes] = []
        for key in self._scan(self._floor(prefix), prefix):
            if key > upto:
                break
            if not (key in self._index and self._index[key] is None):
                due.append(key)
        while (head := self._first_new(new)) is not None and head <= upto:
            heapq.heappop(new)
            due.append(head)
        for key in due:
            self._index[key] = None
        # Only ever up: a floor above `upto` already skips the tombstones in between.
        self._set_floor(prefix, max(self._floor(prefix), upto))
        return due

    def pop_due(self, now_ms: int) -> list[str]:
        """Ids whose timer is due, each once; their timer rows are deleted."""
        due: dict[str, None] = {}
        for key in self._pop_due_keys(b"t", self._new_timers, now_ms):
            if self._timer_is_live(key):
                due[key[11:].decode()] = None
        return list(due)

    def queues_to_pump(
        self, now_ms: int, full_pass_slice: int = FULL_PASS_SLICE
    ) -> Iterator[QueueId]:
        """Queues touched since last time or due to wake, with work waiting or not: a
        queue whose last attempt just ended frees a slot of its scope's budget, which
        other queues of the scope may be waiting for.

        After a rule change, also every queue with work waiting of the scopes it
        concerns, or of the partition (`full_pump_needed`): that iteration runs over
        RocksDB rather than a list, so a million queues need no million-entry list. The
        partition-wide pass looks at `full_pass_slice` stored queues per call and goes
        on from there the next time, so that new input is served between slices (a
        taken-over partition with a million waiting queues answers in seconds, not
        after the whole pass).
        """
        due = self._touched_queues
        self._touched_queues = set()
        for key in self._pop_due_keys(b"k", self._new_wakes, now_ms):
            due.add(QueueId.parse(key[11:].decode()))
        scopes, self._scopes_to_pump = self._scopes_to_pump, set()
        if self._full_pass_needed:
            due.update(q for q, v in self._queues.items() if v is not None)
            yield from self._full_pass_slice(full_pass_slice, exclude=due)
        else:
            due.update(q for q, v in self._queues.items() if v is not None and q.scope in scopes)
            for scope in sorted(scopes):
                yield from self._stored_queues(scope.encode() + b"/", exclude=due)
        yield from due

    def _full_pass_slice(self, size: int, exclude: set[QueueId]) -> Iterator[QueueId]:
        prefix = self._p + b"q"
        for looked_at, key in enumerate(self._scan(self._full_pass_from or prefix, prefix)):
            if looked_at == size:
                self._full_pass_from = key
                return
            queue_id = QueueId.parse(key[3:].decode())
            if queue_id not in exclude:
                queue = self.queue_or_none(queue_id)
                if queue is not None and queue.queued:
                    yield queue_id
        self.full_pump_needed = False

    def _stored_queues(self, under: bytes, exclude: set[QueueId]) -> Iterator[QueueId]:
        prefix = self._p + b"q" + under
        for key in self._scan(prefix, prefix):
            queue_id = QueueId.parse(key[3:].decode())
            if queue_id not in exclude:
                queue = self.queue_or_none(queue_id)
                if queue is not None and queue.queued:
                    yield queue_id

    def next_wake_ms(self) -> int | None:
        keys = [
            self._first_timer(),
            self._first_new_timer(),
            self._first_live(self._p + b"k"),
            self._first_new(self._new_wakes),
        ]
        wakes = [_at(key) for key in keys if key is not None]
        return min(wakes) if wakes else None

    def _first_timer(self) -> bytes | None:
        """The first stored timer row that is not stale; between batches, the stale
        rows in front of it are deleted and the floor moves up to it."""
        prefix = self._p + b"t"
        between_batches = not self._index
        stale = 0
        for key in self._scan(self._floor(prefix), prefix):
            if key in self._index and self._index[key] is None:
                continue
            # Past the limit, wake at this row's time and look on from there.
            if stale >= _PRUNE_MAX or self._timer_is_live(key):
                if between_batches:
                    self._set_floor(prefix, key)
                return key
            stale += 1
            if between_batches:
                self._db.delete(key)
        return None

    def _first_new_timer(self) -> bytes | None:
        while (key := self._first_new(self._new_timers)) is not None:
            if self._timer_is_live(key):
                return key
            heapq.heappop(self._new_timers)
        return None

    def _timer_is_live(self, key: bytes) -> bool:
        invocation = self.invocation(key[11:].decode())
        return (
            invocation is not None
            and invocation.wake_at_ms is not None
            and instant(invocation.wake_at_ms) == key[3:11]
        )

    # -- the batch -------------------------------------------------------------------

    def changelog_writes(self) -> list[ChangelogWrite]:
        """This batch's state rows as changelog records."""
        writes: list[ChangelogWrite] = []
        for invocation_id, invocation in self._invocations.items():
            key = invocation_key(invocation_id)
            if key in self._raw:
                writes.append(ChangelogWrite(key, self._raw[key]))
            else:
                encoded = (
                    None if invocation is None else self._codec.encode_invocation_state(invocation)
                )
                writes.append(ChangelogWrite(key, encoded))
        for queue_id, queue in self._queues.items():
            key = queue_key(queue_id)
            if key in self._raw:
                writes.append(ChangelogWrite(key, self._raw[key]))
            else:
                encoded = None if queue is None else self._codec.encode_queue_state(queue)
                writes.append(ChangelogWrite(key, encoded))
        # After the queues: replayed in order, a scope's counts end as written here.
        for scope, load in self._scopes.items():
            key = scope_key(scope)
            if key in self._raw:
                writes.append(ChangelogWrite(key, self._raw[key]))
            else:
                encoded = None if load is None else self._codec.encode_scope_load(load)
                writes.append(ChangelogWrite(key, encoded))
        for deployment, d_load in self._deployments.items():
            key = deployment_key(deployment)
            if key in self._raw:
                writes.append(ChangelogWrite(key, self._raw[key]))
            else:
                value = None if d_load is None else self._codec.encode_deployment_load(d_load)
                writes.append(ChangelogWrite(key, value))
        return writes

    def changed_queues(self) -> list[tuple[QueueId, VirtualQueue | None]]:
        return list(self._queues.items())

    def commit(self, writes: list[ChangelogWrite], checkpoint: Checkpoint | None) -> None:
        """Write the batch (whose changelog records Kafka committed) to RocksDB."""
        batch = WriteBatch(raw_mode=True)
        for write in writes:
            key = self._row_key(write.key)
            if write.value is None:
                batch.delete(key)
                self._cache.pop(key, None)
            else:
                batch.put(key, write.value)
        for key, value in self._index.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
                self._lower_floor(_index_prefix(key), key)
        if checkpoint is not None:
            batch.put(self._p + b"m", _encode_checkpoint(checkpoint))
        self._db.write(batch)
        for invocation_id, invocation in self._invocations.items():
            if invocation is not None:
                self._remember(self._p + b"i" + invocation_id.encode(), invocation)
        for queue_id, queue in self._queues.items():
            if queue is not None:
                self._remember(self._queue_key(queue_id), queue)
        for scope, load in self._scopes.items():
            if load is not None:
                self._remember(self._p + b"s" + scope.encode(), load)
        for deployment, d_load in self._deployments.items():
            if d_load is not None:
                self._remember(self._p + b"d" + deployment.encode(), d_load)
        self._clear_batch()

    def discard(self) -> None:
        """Forget the batch: its Kafka transaction aborted."""
        self._clear_batch()
        # Floors moved past entries this batch deleted, which are live again.
        self._floors.clear()
        self._touched_queues = set()
        self._scopes_to_pump.clear()
        self.full_pump_needed = True  # the slice this batch pumped is undone too

    def _clear_batch(self) -> None:
        self._invocations.clear()
        self._queues.clear()
        self._scopes.clear()
        self._deployments.clear()
        self._index.clear()
        self._raw.clear()
        self._created.clear()
        self._new_waiting.clear()
        self._new_awaiting.clear()
        self._new_timers.clear()
        self._new_wakes.clear()

    def _row_key(self, changelog_key: str) -> bytes:
        # The changelog's "i/", "q/", "s/" and "d/" become the one-byte tags i, q, s, d.
        return self._p + changelog_key[0].encode() + changelog_key[2:].encode()

    # -- checkpoint ------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint | None:
        raw = self._db.get(self._p + b"m")
        if raw is None:
            return None
        fields = json.loads(bytes(raw))
        return Checkpoint(
            fields["changelog"],
            fields["offset"],
            fields["rules_version"],
            fields["saved_at_ms"],
            fields.get("layout", 1),
        )

    def apply_changelog(self, key: bytes | None, value: bytes | None, now_ms: int) -> None:
        """Fold one changelog record into the batch, as restoring does."""
        text = (key or b"").decode()
        try:
            family, name = parse_changelog_key(text)
        except DecodeError as exc:
            log.warning("skipping changelog record: %s", exc)
            return
        self._raw[text] = value
        match family:
            case RowFamily.INVOCATION:
                if value is None:
                    self.forget_invocation(name)
                else:
                    self.put_invocation(self._codec.decode_invocation_state(value))
            case RowFamily.QUEUE:
                queue_id = QueueId.parse(name)
                restored = None if value is None else self._codec.decode_queue_state(value)
                self._reindex_queue(self.queue_or_none(queue_id), restored)
                self._queues[queue_id] = restored
                if not self.pump_pending:
                    self._touched_queues.add(queue_id)
            case RowFamily.SCOPE:
                self._scopes[name] = None if value is None else self._codec.decode_scope_load(value)
            case RowFamily.DEPLOYMENT:
                self._deployments[name] = (
                    None if value is None else self._codec.decode_deployment_load(value)
                )


def _fair_key(partition_prefix: bytes, queue: VirtualQueue | None) -> bytes | None:
    if queue is None or not queue.queued or not queue.id.scope:
        return None
    return (
        partition_prefix
        + b"f"
        + queue.id.scope.encode()
        + b"\x00"
        # Big-endian IEEE 754 sorts like the number for the tags, which are >= 0.
        + struct.pack(">d", queue.vfinish)
        + queue.id.limit_key.encode()
    )


def _index_prefix(key: bytes) -> bytes:
    if key[2:3] in (b"w", b"a", b"f"):
        return key[: key.index(b"\x00", 3) + 1]
    return key[:3]


def _at(key: bytes) -> int:
    return int.from_bytes(key[3:11], "big")


def _encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    return json.dumps(
        {
            "changelog": checkpoint.changelog,
            "offset": checkpoint.offset,
            "rules_version": checkpoint.rules_version,
            "saved_at_ms": checkpoint.saved_at_ms,
            "layout": checkpoint.layout,
        }
    ).encode()
