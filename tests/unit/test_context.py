"""`ctx.run` against an in-memory journal: execute and journal, replay, fail, wait for acks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline.core.model import (
    DispatchOrder,
    EntryAppended,
    EntryKind,
    Failure,
    InvocationRequest,
    JournalEntry,
    Target,
)
from pipeline.core.replay import JournalMismatch
from pipeline.errors import NonDeterminismError, TerminalError
from pipeline.sdk import BytesSerde, Context
from pipeline.sdk.errors import AttemptBroken

T = TypeVar("T")
RUN = EntryKind.RUN


class MemoryJournal:
    """A `JournalWriter` that keeps records in a list; acks at once unless told to hold."""

    def __init__(self, *, hold_acks: bool = False) -> None:
        self.records: list[EntryAppended] = []
        self.acks: list[asyncio.Future[None]] = []
        self._hold_acks = hold_acks

    async def ready(self) -> None:
        return None

    def append(self, record: EntryAppended) -> Awaitable[None]:
        self.records.append(record)
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._hold_acks:
            ack.set_result(None)
        self.acks.append(ack)
        return ack

    @property
    def entries(self) -> list[JournalEntry]:
        return [r.entry for r in self.records]


def order(*journal: JournalEntry, attempt: int = 3, key: str | None = None) -> DispatchOrder:
    request = InvocationRequest(
        id="inv-1",
        target=Target("shop", "checkout", key=key),
        input=b"{}",
        created_at_ms=0,
        headers=(("x-user", b"ada"),),
    )
    return DispatchOrder(request, attempt, tuple(journal))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Calls:
    """Actions that count how often they ran."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def returning(self, name: str, value: Any) -> Callable[[], Any]:
        def action() -> Any:
            self.names.append(name)
            return value

        return action


def test_context_exposes_the_invocation() -> None:
    ctx = Context(order(attempt=4, key="cart-9"), MemoryJournal())
    assert ctx.invocation_id == "inv-1"
    assert ctx.attempt == 4
    assert ctx.target == Target("shop", "checkout", key="cart-9")
    assert ctx.key == "cart-9"
    assert ctx.headers == (("x-user", b"ada"),)


def test_new_steps_run_and_are_journaled_in_order() -> None:
    journal, calls = MemoryJournal(), Calls()

    async def handler() -> list[Any]:
        ctx = Context(order(), journal)

        async def reserve() -> dict[str, int]:
            calls.names.append("reserve")
            return {"units": 2}

        first = await ctx.run("charge", calls.returning("charge", 42))
        second = await ctx.run("reserve", reserve)
        third = await ctx.run("notify", calls.returning("notify", None))
        return [first, second, third]

    assert run(handler()) == [42, {"units": 2}, None]
    assert calls.names == ["charge", "reserve", "notify"]
    assert journal.entries == [
        JournalEntry(0, RUN, "charge", value=b"42"),
        JournalEntry(1, RUN, "reserve", value=b'{"units":2}'),
        JournalEntry(2, RUN, "notify", value=b"null"),
    ]
    assert {(r.invocation_id, r.attempt) for r in journal.records} == {("inv-1", 3)}


def test_recorded_steps_replay_without_running_and_new_steps_follow() -> None:
    recorded = (
        JournalEntry(0, RUN, "charge", value=b"42"),
        JournalEntry(1, RUN, "reserve", value=b'{"units":2}'),
    )
    journal, calls = MemoryJournal(), Calls()

    async def handler() -> list[Any]:
        ctx = Context(order(*recorded), journal)
        return [
            await ctx.run("charge", calls.returning("charge", 0)),
            await ctx.run("reserve", calls.returning("reserve", {})),
            await ctx.run("ship", calls.returning("ship", "parcel-1")),
        ]

    assert run(handler()) == [42, {"units": 2}, "parcel-1"]
    assert calls.names == ["ship"]
    assert journal.entries == [JournalEntry(2, RUN, "ship", value=b'"parcel-1"')]


def test_a_changed_step_raises_non_determinism_without_running() -> None:
    recorded = JournalEntry(0, RUN, "charge", value=b"42")
    journal, calls = MemoryJournal(), Calls()

    async def handler() -> Context:
        ctx = Context(order(recorded), journal)
        with pytest.raises(NonDeterminismError) as caught:
            await ctx.run("refund", calls.returning("refund", 1))
        assert isinstance(caught.value, JournalMismatch)
        assert "'charge'" in str(caught.value) and "'refund'" in str(caught.value)
        return ctx

    ctx = run(handler())
    assert calls.names == []
    assert journal.records == []
    # Remembered, so that a handler catching it cannot complete on a foreign journal.
    assert isinstance(ctx.nondeterminism, JournalMismatch)


def test_a_terminal_failure_is_journaled_then_raised() -> None:
    journal = MemoryJournal()

    def decline() -> int:
        raise TerminalError("card declined")

    async def handler() -> None:
        ctx = Context(order(), journal)
        await ctx.run("charge", decline)

    with pytest.raises(TerminalError, match="card declined"):
        run(handler())
    assert journal.entries == [
        JournalEntry(
            0, RUN, "charge", failure=Failure("card declined", "TerminalError", True, code=500)
        )
    ]


def test_a_handler_may_catch_a_terminal_step_failure_and_go_on() -> None:
    journal = MemoryJournal()

    def decline() -> int:
        raise TerminalError("card declined")

    async def handler() -> str:
        ctx = Context(order(), journal)
        try:
            await ctx.run("charge", decline)
        except TerminalError:
            return await ctx.run("cancel order", lambda: "cancelled")
        return "charged"

    assert run(handler()) == "cancelled"
    assert [(e.index, e.name) for e in journal.entries] == [(0, "charge"), (1, "cancel order")]


def test_a_recorded_terminal_failure_replays_as_terminal_error_without_running() -> None:
    recorded = JournalEntry(
        0, RUN, "charge", failure=Failure("card declined", "TerminalError", terminal=True)
    )
    journal, calls = MemoryJournal(), Calls()

    async def handler() -> None:
        ctx = Context(order(recorded), journal)
        await ctx.run("charge", calls.returning("charge", 42))

    with pytest.raises(TerminalError, match="card declined"):
        run(handler())
    assert calls.names == []
    assert journal.records == []


def test_a_terminal_errors_code_is_journaled_and_comes_back_on_replay() -> None:
    journal = MemoryJournal()

    def decline() -> int:
        raise TerminalError("card declined", code=402)

    async def first() -> None:
        await Context(order(), journal).run("charge", decline)

    with pytest.raises(TerminalError) as raised:
        run(first())
    assert raised.value.code == 402
    (entry,) = journal.entries
    assert entry.failure == Failure("card declined", "TerminalError", True, code=402)

    async def replayed() -> None:
        await Context(order(entry), MemoryJournal()).run("charge", decline)

    with pytest.raises(TerminalError) as again:
        run(replayed())
    assert again.value.code == 402


def test_the_value_is_returned_only_after_the_journal_acknowledged_it() -> None:
    journal = MemoryJournal(hold_acks=True)

    async def scenario() -> None:
        ctx = Context(order(), journal)
        step = asyncio.create_task(ctx.run("charge", lambda: 42))
        for _ in range(5):
            await asyncio.sleep(0)
        assert journal.entries == [JournalEntry(0, RUN, "charge", value=b"42")]
        assert not step.done()
        journal.acks[0].set_result(None)
        assert await step == 42

    run(scenario())


def test_a_failed_ack_fails_the_step_and_breaks_the_attempt() -> None:
    journal = MemoryJournal(hold_acks=True)
    calls = Calls()

    async def scenario() -> None:
        ctx = Context(order(), journal)
        step = asyncio.create_task(ctx.run("charge", lambda: 42))
        while not journal.acks:
            await asyncio.sleep(0)
        journal.acks[0].set_exception(ConnectionError("broker gone"))
        with pytest.raises(ConnectionError):
            await step
        with pytest.raises(AttemptBroken, match="step 0 'charge' failed"):
            await ctx.run("ship", calls.returning("ship", 1))

    run(scenario())
    assert calls.names == []


def test_other_exceptions_propagate_unjournaled_and_break_later_steps() -> None:
    journal, calls = MemoryJournal(), Calls()

    async def flaky() -> int:
        raise TimeoutError("payment API timed out")

    async def handler() -> None:
        ctx = Context(order(), journal)
        await ctx.run("charge", lambda: 1)
        with pytest.raises(TimeoutError):
            await ctx.run("capture", flaky)
        # The handler swallowed the failure; journaling "ship" at index 2 would leave a
        # gap at index 1, so the attempt cannot go on.
        with pytest.raises(AttemptBroken):
            await ctx.run("ship", calls.returning("ship", 1))

    run(handler())
    assert calls.names == []
    assert [e.name for e in journal.entries] == ["charge"]


def test_concurrent_steps_are_journaled_in_the_order_they_started() -> None:
    journal = MemoryJournal()

    async def scenario() -> list[str]:
        release = asyncio.Event()  # "fast" finishes first and lets "slow" finish after it

        async def slow() -> str:
            await release.wait()
            return "slow"

        async def fast() -> str:
            release.set()
            return "fast"

        ctx = Context(order(), journal)
        return list(await asyncio.gather(ctx.run("slow", slow), ctx.run("fast", fast)))

    assert run(scenario()) == ["slow", "fast"]
    assert [(e.index, e.name) for e in journal.entries] == [(0, "slow"), (1, "fast")]


def test_a_step_serde_chooses_the_stored_bytes() -> None:
    journal = MemoryJournal()
    recorded = JournalEntry(0, RUN, "blob", value=b"\x00\x01")

    async def handler() -> tuple[bytes, bytes]:
        ctx = Context(order(recorded), journal)
        replayed = await ctx.run("blob", lambda: b"never", serde=BytesSerde())
        fresh = await ctx.run("blob2", lambda: b"\xff", serde=BytesSerde())
        return replayed, fresh

    assert run(handler()) == (b"\x00\x01", b"\xff")
    assert journal.entries == [JournalEntry(1, RUN, "blob2", value=b"\xff")]


def test_an_unserializable_value_fails_the_step_unjournaled() -> None:
    journal = MemoryJournal()

    async def handler() -> None:
        ctx = Context(order(), journal)
        await ctx.run("charge", lambda: object())

    with pytest.raises(TypeError, match="step 0 'charge'"):
        run(handler())
    assert journal.records == []


def test_each_step_has_a_span_saying_whether_it_was_replayed() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorded = JournalEntry(0, RUN, "charge", value=b"42")

    async def handler() -> None:
        ctx = Context(order(recorded), MemoryJournal(), tracer=provider.get_tracer("test"))
        await ctx.run("charge", lambda: 0)
        await ctx.run("ship", lambda: 1)

    run(handler())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"run charge", "run ship"}
    assert spans["run charge"].attributes is not None
    assert spans["run charge"].attributes["pipeline.replayed"] is True
    assert spans["run ship"].attributes is not None
    assert spans["run ship"].attributes["pipeline.replayed"] is False


def test_a_step_over_the_journal_limit_raises_payload_too_large_and_journals_nothing() -> None:
    from pipeline.core.payload import PayloadLimits
    from pipeline.errors import PayloadTooLarge

    journal = MemoryJournal()
    limits = PayloadLimits(max_journal_bytes=1_000, max_request_bytes=500)
    ctx = Context(
        order(), journal, limits=limits, request_encoder=lambda r: b"r" * 600, clock_ms=lambda: 0
    )

    async def handler() -> None:
        await ctx.run("small", lambda: "a" * 100)
        with pytest.raises(PayloadTooLarge, match="max_journal_bytes=1000"):
            await ctx.run("big", lambda: "b" * 2_000)

    run(handler())
    assert [e.name for e in journal.entries] == ["small"]

    sender = Context(
        order(),
        MemoryJournal(),
        limits=limits,
        request_encoder=lambda r: b"r" * 600,
        clock_ms=lambda: 0,
    )

    async def sends() -> None:
        with pytest.raises(PayloadTooLarge, match="max_request_bytes=500"):
            await sender.send("Mail/notify", {"to": "ada"})

    run(sends())
