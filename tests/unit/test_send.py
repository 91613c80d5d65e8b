"""`ctx.send`: a one-way invocation journaled like a step, sent once, replayed by id."""

from __future__ import annotations

import asyncio

from pipeline.codec.records import WireCodec
from pipeline.core.model import EntryAppended, EntryKind, JournalEntry
from pipeline.core.scheduler import DecisionContext, JournalArrived, SendInvocation, decide
from pipeline.core.state import VirtualQueue
from pipeline.sdk.context import Context
from tests.unit.test_context import MemoryJournal, order
from tests.unit.test_scheduler_core import HANDLER, Driver

CODEC = WireCodec()


def context(*journal: JournalEntry) -> tuple[Context, MemoryJournal]:
    writer = MemoryJournal()
    ctx = Context(
        order(*journal), writer, request_encoder=CODEC.encode_request, clock_ms=lambda: 42
    )
    return ctx, writer


def test_send_journals_the_request_and_returns_a_stable_id() -> None:
    ctx, journal = context()
    invocation_id = asyncio.run(
        ctx.scope("team-7").send("Mail/notify", {"to": "ada"}, limit_key="user-1", priority=2)
    )
    [entry] = journal.entries
    assert (entry.kind, entry.name, entry.index) == (EntryKind.SEND, "Mail/notify", 0)
    assert entry.value is not None
    sent = CODEC.decode_request(
        entry.value, headers=[], topic="t", partition=0, offset=0, timestamp_ms=0
    )
    assert sent.id == invocation_id == f"{ctx.invocation_id}:send:0"
    assert (sent.scope, sent.limit_key, sent.priority) == ("team-7", "user-1", 2)
    assert sent.input == b'{"to":"ada"}' and sent.created_at_ms == 42


def test_a_replayed_send_sends_nothing_and_returns_the_same_id() -> None:
    first, journal = context()
    sent_id = asyncio.run(first.send("Mail/notify", 1))
    again, replay_journal = context(*journal.entries)
    assert asyncio.run(again.send("Mail/notify", 1)) == sent_id
    assert replay_journal.entries == []


def test_the_scheduler_emits_a_journaled_send_once() -> None:
    d = Driver()
    d.arrive("a")
    entry = JournalEntry(0, EntryKind.SEND, "Mail/notify", value=b"request")
    effects = d.journal(EntryAppended("a", 1, entry))
    assert effects == [SendInvocation(b"request")]
    # The same entry again (a duplicate delivery) is not appended, so not sent again.
    ctx = DecisionContext(d.now, HANDLER, 1_000, 0.5)
    queue = VirtualQueue(d.invocations["a"].queue_id)
    again = decide(d.invocations["a"], queue, JournalArrived(EntryAppended("a", 1, entry)), ctx)
    assert not any(isinstance(e, SendInvocation) for e in again.effects)
