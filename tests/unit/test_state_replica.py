"""The Admin API's replica of scheduler state on RocksDB, without a broker: keyed reads,
positions in a queue, paginated lists, and index rows that follow every update."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.codec.records import WireCodec
from pipeline.codec.state_keys import invocation_key
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.model import InvocationRequest, QueueId, Target
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.errors import ValidationError
from pipeline.views.invocation_index import InvocationQuery, decode_cursor
from tests.support.state_replica import fold, replica

QUEUE = QueueId("acme", "k")
CODEC = WireCodec()


def pending(
    invocation_id: str,
    seq: int,
    priority: int = 5,
    key: str = "k",
    status: InvocationStatus = InvocationStatus.PENDING,
    service: str = "S",
    scope: str | None = "acme",
) -> Invocation:
    request = InvocationRequest(
        invocation_id,
        Target(service, "h"),
        b"",
        0,
        scope=scope,
        limit_key=key if scope else None,
        priority=priority,
    )
    return Invocation(request, status, queue_seq=seq)


def awaiting(invocation_id: str, since: int, priority: int = 5) -> Invocation:
    return replace(
        pending(invocation_id, 0, priority=priority),
        status=InvocationStatus.AWAITING_CAPACITY,
        deployment="S",
        awaiting_since_ms=since,
    )


def test_waiting_position_orders_by_priority_then_sequence() -> None:
    first = pending("a", seq=5, priority=1)
    second = pending("b", seq=1, priority=5)
    third = pending("c", seq=2, priority=5)
    view = replica([third, first, second], [VirtualQueue(QUEUE, queued=3, running=1)])

    assert [view.ahead_of(i) for i in (first, second, third)] == [0, 1, 2]


def test_only_pending_invocations_of_the_same_queue_count() -> None:
    me = pending("me", seq=9)
    view = replica(
        [
            pending("running", seq=1, status=InvocationStatus.RUNNING),
            pending("other-queue", seq=1, key="other"),
            pending("backing-off", seq=2, status=InvocationStatus.BACKING_OFF),
            pending("ahead", seq=3),
            me,
        ]
    )

    assert view.ahead_of(me) == 1


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 20)),
        min_size=1,
        max_size=30,
        unique_by=lambda entry: entry[1],
    )
)
def test_positions_are_a_permutation_in_priority_then_fifo_order(
    entries: list[tuple[int, int]],
) -> None:
    invocations = [
        pending(f"i{n}", seq=seq, priority=priority) for n, (priority, seq) in enumerate(entries)
    ]
    view = replica(invocations)
    try:
        ahead = {inv.id: view.ahead_of(inv) for inv in invocations}
    finally:
        view.stop()

    assert sorted(ahead.values()) == list(range(len(invocations)))
    by_position = sorted(invocations, key=lambda inv: ahead[inv.id])
    keys = [(inv.request.priority, inv.queue_seq) for inv in by_position]
    assert keys == sorted(keys)


def test_an_awaiting_invocation_counts_those_before_it_on_its_partition() -> None:
    me = awaiting("me", since=20)
    others = [awaiting("early", 10), awaiting("late", 30), awaiting("urgent", 40, priority=0)]
    elsewhere = awaiting("elsewhere", 1)
    view = replica([me, *others, elsewhere], partition_of={"elsewhere": 3})

    assert view.ahead_of(me) == 2


def test_an_update_moves_the_invocation_between_indexes_and_a_tombstone_removes_it() -> None:
    first, second = pending("a", seq=1), pending("b", seq=2)
    view = replica([first, second])
    assert view.ahead_of(second) == 1

    started = replace(first, status=InvocationStatus.RUNNING)
    fold(view, [(0, invocation_key("a"), CODEC.encode_invocation_state(started))])
    assert view.ahead_of(second) == 0
    assert ids(view, status=InvocationStatus.PENDING) == ["b"]
    assert ids(view, status=InvocationStatus.RUNNING) == ["a"]

    fold(view, [(0, invocation_key("a"), None)])
    assert view.invocation("a") is None
    assert ids(view) == ["b"] and ids(view, status=InvocationStatus.RUNNING) == []


def test_two_versions_in_one_batch_leave_the_rows_of_the_last() -> None:
    first = pending("a", seq=1)
    view = replica()
    done = replace(first, status=InvocationStatus.COMPLETED, finished_at_ms=5)
    fold(
        view,
        [
            (0, invocation_key("a"), CODEC.encode_invocation_state(first)),
            (0, invocation_key("a"), CODEC.encode_invocation_state(done)),
        ],
    )

    assert ids(view, status=InvocationStatus.PENDING) == []
    assert ids(view, status=InvocationStatus.COMPLETED) == ["a"]
    assert view.invocation("a") == done


def test_filters_combine_and_pages_follow_the_cursor() -> None:
    invocations = [
        pending(f"inv-{n:02d}", seq=n, service="A" if n % 2 else "B", scope=None if n % 3 else "t")
        for n in range(20)
    ]
    view = replica(invocations)

    assert ids(view, service="A", scope="") == [
        f"inv-{n:02d}" for n in range(20) if n % 2 and n % 3
    ]
    seen: list[str] = []
    after: str | None = None
    while True:
        page = view.list_invocations(InvocationQuery(limit=7, after=after))
        seen += [i.id for i in page.invocations]
        if page.next_cursor is None:
            break
        after = decode_cursor(page.next_cursor)
    assert seen == sorted(i.id for i in invocations)


def test_a_bad_changelog_record_is_skipped_and_the_rest_of_the_batch_is_kept() -> None:
    view = replica()
    good = pending("good", seq=1)
    fold(
        view,
        [
            (0, invocation_key("bad"), b"\xff\xfenot avro"),
            (0, "z/unknown-family", b""),
            (0, invocation_key("good"), CODEC.encode_invocation_state(good)),
        ],
    )

    assert view.invocation("bad") is None
    assert view.invocation("good") == good


def test_a_cursor_this_api_did_not_give_is_refused() -> None:
    with pytest.raises(ValidationError, match="not one this API gave"):
        decode_cursor("!!")


def ids(view: object, **filters: object) -> list[str]:
    page = view.list_invocations(InvocationQuery(**filters))  # type: ignore[attr-defined, arg-type]
    return [i.id for i in page.invocations]
