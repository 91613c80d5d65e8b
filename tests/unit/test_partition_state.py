"""The scheduler's RocksDB-backed partition state, against a real RocksDB in a tmp dir."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.codec.records import WireCodec
from pipeline.core.checkpoint import MAX_AGE_MS as CHECKPOINT_MAX_AGE_MS
from pipeline.core.fair_share import fair_order
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.limits import LimitRule, RulePattern, RuleSet
from pipeline.core.model import InvocationRequest, QueueId, Target
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.core.verdict import Blocker
from pipeline.runtime.scheduler.partition_state import Checkpoint, PartitionState
from pipeline.runtime.scheduler.queue_pump import RulesInForce, pump
from pipeline.runtime.scheduler.restore import usable_start
from pipeline.runtime.state_store import StateStore

CODEC = WireCodec()
QUEUE = QueueId("acme", "user-1")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore(tmp_path, "group", "instance")
    yield store
    store.close()


def pending(
    invocation_id: str, *, priority: int = 5, seq: int = 0, scope: str = "acme"
) -> Invocation:
    request = InvocationRequest(
        invocation_id,
        Target("S", "h"),
        b"",
        0,
        scope=scope,
        limit_key="user-1",
        priority=priority,
    )
    return Invocation(request, InvocationStatus.PENDING, queue_seq=seq)


def commit(state: PartitionState) -> None:
    state.commit(state.changelog_writes(), Checkpoint("changelog", 1, 0, 0))


def test_a_batch_is_visible_at_once_and_durable_only_after_commit(store: StateStore) -> None:
    state = PartitionState(store, 0, CODEC)
    state.put_invocation(pending("a"))
    assert state.invocation("a") == pending("a")
    state.discard()
    assert state.invocation("a") is None

    state.put_invocation(pending("a"))
    commit(state)
    assert PartitionState(store, 0, CODEC).invocation("a") == pending("a")
    assert PartitionState(store, 1, CODEC).invocation("a") is None


def test_waiting_order_is_priority_then_fifo_across_committed_and_new(
    store: StateStore,
) -> None:
    state = PartitionState(store, 0, CODEC)
    state.put_invocation(pending("late-urgent", priority=1, seq=9))
    state.put_invocation(pending("early", priority=5, seq=1))
    commit(state)
    state.put_invocation(pending("new-most-urgent", priority=0, seq=10))
    assert state.waiting_head(QUEUE) == "new-most-urgent"
    state.put_invocation(
        state.invocation("new-most-urgent").evolve(status=InvocationStatus.RUNNING)
    )  # type: ignore[union-attr]
    assert state.waiting_head(QUEUE) == "late-urgent"
    state.forget_invocation("late-urgent")
    assert state.waiting_head(QUEUE) == "early"
    commit(state)
    assert PartitionState(store, 0, CODEC).waiting_head(QUEUE) == "early"


def test_due_timers_fire_once_and_a_kept_wake_time_keeps_its_timer(store: StateStore) -> None:
    state = PartitionState(store, 0, CODEC)
    state.put_invocation(pending("a").evolve(wake_at_ms=100))
    state.put_invocation(pending("b").evolve(wake_at_ms=200))
    commit(state)
    state.put_invocation(pending("c").evolve(wake_at_ms=150))
    assert state.next_wake_ms() == 100
    assert sorted(state.pop_due(150)) == ["a", "c"]
    assert state.pop_due(150) == []
    assert state.next_wake_ms() == 200
    state.put_invocation(state.invocation("a"))  # type: ignore[arg-type]
    assert state.pop_due(150) == ["a"]
    commit(state)
    assert PartitionState(store, 0, CODEC).pop_due(1_000) == ["b"]


def test_a_full_pump_visits_every_queue_with_waiting_work(store: StateStore) -> None:
    state = PartitionState(store, 0, CODEC)
    for i in range(5):
        state.put_queue(VirtualQueue(QueueId("s", f"k{i}"), queued=1), now_ms=0)
    state.put_queue(VirtualQueue(QueueId("s", "running-only"), running=1), now_ms=0)
    commit(state)
    state = PartitionState(store, 0, CODEC)
    assert state.full_pump_needed
    assert sorted(str(q) for q in state.queues_to_pump(0)) == [f"s/k{i}" for i in range(5)]
    assert list(state.queues_to_pump(0)) == []


def test_a_rule_change_for_some_scopes_pumps_only_their_queues(store: StateStore) -> None:
    state = PartitionState(store, 0, CODEC)
    for scope in ("acme", "acme2", "other"):
        state.put_queue(VirtualQueue(QueueId(scope, "k"), queued=1), now_ms=0)
    commit(state)
    state = PartitionState(store, 0, CODEC)
    state.full_pump_needed = False
    state.pump_after_rule_change(frozenset({"acme"}))
    assert state.pump_pending
    assert [str(q) for q in state.queues_to_pump(0)] == ["acme/k"]
    assert not state.pump_pending
    state.pump_after_rule_change(None)
    assert sorted(str(q) for q in state.queues_to_pump(0)) == ["acme/k", "acme2/k", "other/k"]


def test_an_idle_queue_leaves_no_row(store: StateStore) -> None:
    state = PartitionState(store, 0, CODEC)
    state.put_queue(VirtualQueue(QUEUE, queued=1), now_ms=0)
    commit(state)
    state.put_queue(VirtualQueue(QUEUE), now_ms=0)
    commit(state)
    assert PartitionState(store, 0, CODEC).queue_or_none(QUEUE) is None
    rows = list(store.db.keys())
    assert [k for k in rows if bytes(k)[2:3] == b"q"] == []


def test_a_queue_kept_for_its_rate_debt_is_dropped_once_the_debt_runs_out(
    store: StateStore,
) -> None:
    state = PartitionState(store, 0, CODEC)
    state.put_queue(VirtualQueue(QUEUE, rate_tat_ms=1_500.0), now_ms=1_000)
    commit(state)
    list(state.queues_to_pump(1_000))  # the batch that stored it pumps it once
    assert state.queue_or_none(QUEUE) is not None
    assert state.next_wake_ms() == 1_500
    pump(state, RulesInForce(), 1_500, lambda *_: False)
    commit(state)
    assert PartitionState(store, 0, CODEC).queue_or_none(QUEUE) is None


OPERATION = st.one_of(
    st.tuples(st.just("enqueue"), st.integers(0, 9), st.integers(0, 9)),
    st.tuples(st.just("start"), st.integers(0, 9)),
    st.tuples(st.just("forget"), st.integers(0, 9)),
    st.tuples(st.just("timer"), st.integers(0, 9), st.integers(0, 50)),
    st.tuples(st.just("fire"), st.integers(0, 60)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("discard")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(OPERATION, max_size=60))
def test_derived_rows_stay_in_step_with_the_invocations(
    tmp_path_factory: pytest.TempPathFactory, operations: list[tuple[object, ...]]
) -> None:
    """Waiting order and timers read from RocksDB plus the batch agree with a plain
    model of the invocations, whatever mix of writes, commits and aborts came before."""
    store = StateStore(tmp_path_factory.mktemp("prop"), "group", "instance")
    try:
        state = PartitionState(store, 3, CODEC)
        committed: dict[str, Invocation] = {}
        batch: dict[str, Invocation | None] = {}
        seq = 0

        def current() -> dict[str, Invocation]:
            merged = {**committed, **batch}
            return {k: v for k, v in merged.items() if v is not None}

        for op in operations:
            model = current()
            match op:
                case ("enqueue", n, priority):
                    seq += 1
                    invocation = pending(f"i{n}", priority=int(str(priority)), seq=seq)
                    state.put_invocation(invocation)
                    batch[invocation.id] = invocation
                case ("start", n) if f"i{n}" in model:
                    started = model[f"i{n}"].evolve(status=InvocationStatus.RUNNING)
                    state.put_invocation(started)
                    batch[started.id] = started
                case ("forget", n) if f"i{n}" in model:
                    state.forget_invocation(f"i{n}")
                    batch[f"i{n}"] = None
                case ("timer", n, at) if f"i{n}" in model:
                    timed = model[f"i{n}"].evolve(wake_at_ms=at)
                    state.put_invocation(timed)
                    batch[timed.id] = timed
                case ("fire", now):
                    due = sorted(state.pop_due(int(str(now))))
                    expected = sorted(
                        k
                        for k, v in model.items()
                        if v.wake_at_ms is not None and v.wake_at_ms <= int(str(now))
                    )
                    assert due == expected
                    for k in due:
                        # As the scheduler does: a fired timer moves on (here: goes away).
                        moved = model[k].evolve(wake_at_ms=None)
                        state.put_invocation(moved)
                        batch[k] = moved
                case ("commit",):
                    commit(state)
                    committed = current()
                    batch = {}
                case ("discard",):
                    state.discard()
                    batch = {}
            waiting = [v for v in current().values() if v.status is InvocationStatus.PENDING]
            head = min(waiting, key=lambda v: (v.request.priority, v.queue_seq), default=None)
            assert state.waiting_head(QUEUE) == (None if head is None else head.id)
            wakes = [v.wake_at_ms for v in current().values() if v.wake_at_ms is not None]
            assert state.next_wake_ms() == (min(wakes) if wakes else None)
    finally:
        store.close()


def test_an_old_checkpoint_is_kept_when_nothing_was_written_after_it() -> None:
    old = Checkpoint("changelog", 100, 0, 0)
    late = CHECKPOINT_MAX_AGE_MS + 1
    assert usable_start(old, "changelog", 101, late) == 100  # only its batch's marker
    assert usable_start(old, "changelog", 150, late) is None  # tombstones may be gone
    assert usable_start(old, "changelog", 150, 0) == 100
    assert usable_start(old, "other", 101, 0) is None


QUEUE_OPERATION = st.one_of(
    # (queue, queued, running, finish tag)
    st.tuples(
        st.just("put"), st.integers(0, 5), st.integers(0, 2), st.integers(0, 1), st.integers(0, 3)
    ),
    st.tuples(st.just("commit")),
    st.tuples(st.just("discard")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(QUEUE_OPERATION, max_size=50))
# Closed, reopened and closed again in one batch: the stored marker must still go.
@example([("put", 0, 1, 0, 0), ("commit",), *[("put", 0, n, 0, 0) for n in (0, 1, 0)], ("commit",)])
def test_the_queues_a_scope_has_waiting_follow_the_queue_rows(
    tmp_path_factory: pytest.TempPathFactory, operations: list[tuple[object, ...]]
) -> None:
    """Within a batch, after commits and aborts, and once restored from the changelog."""
    root = tmp_path_factory.mktemp("open")
    store, replica = StateStore(root, "g", "live"), StateStore(root, "g", "replica")
    try:
        state = PartitionState(store, 0, CODEC)
        committed: dict[QueueId, int] = {}
        batch: dict[QueueId, int] = {}
        changelog: list[tuple[str, bytes | None]] = []
        for operation in operations:
            if operation[0] == "put":
                _, k, queued, running, tag = operation
                queue = VirtualQueue(
                    QueueId("acme", f"k{k}"), queued=queued, running=running, vfinish=float(tag)
                )
                state.put_queue(queue, now_ms=0)
                batch[queue.id] = queued
            elif operation[0] == "commit":
                writes = state.changelog_writes()
                changelog += [(w.key, w.value) for w in writes]
                state.commit(writes, None)
                committed.update(batch)
                batch.clear()
                # No index row outlives its queue's waiting work, even if never read.
                stored = (bytes(k) for k in store.db.keys())  # noqa: SIM118 (a Rdict, not a dict)
                after_tag = 3 + len(b"acme\x00") + 8  # partition, "f", scope, vfinish
                rows = {k[after_tag:].decode() for k in stored if k[2:3] == b"f"}
                assert rows == {q.limit_key for q, n in committed.items() if n}
            else:
                state.discard()
                batch.clear()
            expected = {q for q, n in {**committed, **batch}.items() if n}
            waiting = list(state.queues_of_scope("acme"))
            assert {q.id for q in waiting} == expected
            assert waiting == sorted(waiting, key=fair_order)
        restored = PartitionState(replica, 0, CODEC)
        for key, value in changelog:
            restored.apply_changelog(key.encode(), value, 0)
        restored.commit(restored.changelog_writes(), None)
        expected = {q for q, n in committed.items() if n}
        assert {q.id for q in restored.queues_of_scope("acme")} == expected
        assert {q.id for q in PartitionState(store, 0, CODEC).queues_of_scope("acme")} == expected
    finally:
        store.close()
        replica.close()


def test_a_store_with_older_derived_rows_is_restored_in_full() -> None:
    assert usable_start(Checkpoint("changelog", 10, 0, 0, layout=1), "changelog", 10, 0) is None
    assert usable_start(Checkpoint("changelog", 10, 0, 0), "changelog", 10, 0) == 10


@settings(max_examples=25, deadline=None)
@given(queues=st.integers(0, 60), slice_size=st.integers(1, 25))
def test_a_full_pump_runs_in_slices_that_together_visit_every_waiting_queue_once(
    tmp_path_factory: pytest.TempPathFactory, queues: int, slice_size: int
) -> None:
    store = StateStore(tmp_path_factory.mktemp("slices"), "group", "instance")
    try:
        state = PartitionState(store, 0, CODEC)
        for i in range(queues):
            state.put_queue(VirtualQueue(QueueId("s", f"k{i:03}"), queued=i % 3), now_ms=0)
        commit(state)
        state = PartitionState(store, 0, CODEC)
        visited: list[str] = []
        passes = 0
        while state.full_pump_needed:
            sliced = [str(q) for q in state.queues_to_pump(0, full_pass_slice=slice_size)]
            # Each slice is bounded, so new input waits for one slice at most.
            assert len(sliced) <= slice_size
            visited += sliced
            passes += 1
            assert passes <= queues // slice_size + 1
        assert sorted(visited) == [f"s/k{i:03}" for i in range(queues) if i % 3]
        assert list(state.queues_to_pump(0, full_pass_slice=slice_size)) == []
    finally:
        store.close()


def test_a_rule_change_during_a_sliced_pass_starts_it_again(store: StateStore) -> None:
    state = PartitionState(store, 0, CODEC)
    for i in range(6):
        state.put_queue(VirtualQueue(QueueId("s", f"k{i}"), queued=1), now_ms=0)
    commit(state)
    state = PartitionState(store, 0, CODEC)
    assert [str(q) for q in state.queues_to_pump(0, full_pass_slice=4)] == [
        f"s/k{i}" for i in range(4)
    ]
    state.pump_after_rule_change(None)
    first = [str(q) for q in state.queues_to_pump(0, full_pass_slice=4)]
    rest = [str(q) for q in state.queues_to_pump(0, full_pass_slice=4)]
    assert (first, rest) == ([f"s/k{i}" for i in range(4)], ["s/k4", "s/k5"])
    assert not state.full_pump_needed


def test_the_pump_keeps_its_verdict_on_the_head_with_the_queue(store: StateStore) -> None:
    state = PartitionState(store, 0, CODEC)
    rules = RulesInForce()
    rules.put(RuleSet(1, (LimitRule("fast", RulePattern.parse("acme/*"), rate_per_s=2, burst=1),)))
    state.put_queue(VirtualQueue(QUEUE, queued=2, rate_tat_ms=1_400.0), now_ms=1_000)
    list(state.queues_to_pump(1_000))
    state.put_queue(VirtualQueue(QUEUE, queued=2, rate_tat_ms=1_400.0), now_ms=1_000)

    pump(state, rules, 1_000, lambda *_: True)
    commit(state)

    kept = PartitionState(store, 0, CODEC).queue(QUEUE).blocked
    assert kept is not None and kept.blocker is Blocker.RATE and kept.rule_id == "fast"
    assert (kept.until_ms, kept.decided_at_ms) == (1_400, 1_000)

    def start(state: PartitionState, queue_id: QueueId, now: int) -> bool:
        queue = state.queue(queue_id)
        state.put_queue(replace(queue, queued=queue.queued - 1, running=queue.running + 1), now)
        return True

    state.put_queue(replace(state.queue(QUEUE), rate_tat_ms=0.0), now_ms=1_400)
    pump(state, rules, 1_400, start)
    after = state.queue(QUEUE)
    assert after.queued == 0 and after.blocked is None, "a head that started leaves no blocker"
