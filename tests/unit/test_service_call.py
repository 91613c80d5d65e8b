"""`ctx.service_call`: journaled like a send, suspends until the callee's result is in."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from pipeline.core.model import Caller, EntryKind, Failure, JournalEntry
from pipeline.errors import Suspended, TerminalError
from pipeline.sdk.context import Context
from tests.unit.test_send import CODEC, context


async def two_calls(ctx: Context) -> tuple[object, object]:
    first = await ctx.scope("team-7").service_call("Pricing/quote", {"sku": 1}, limit_key="u-1")
    second = await ctx.service_call("Stock/reserve", first)
    return first, second


def test_a_new_call_is_journaled_with_its_caller_then_suspends() -> None:
    ctx, journal = context()
    with pytest.raises(Suspended) as suspended:
        asyncio.run(two_calls(ctx))
    assert suspended.value.awaiting_index == 0
    [entry] = journal.entries
    assert (entry.kind, entry.name, entry.index) == (EntryKind.CALL, "Pricing/quote", 0)
    assert entry.value is not None
    sent = CODEC.decode_request(
        entry.value, headers=[], topic="t", partition=0, offset=0, timestamp_ms=0
    )
    assert sent.id == f"{ctx.invocation_id}:send:0"
    assert (sent.scope, sent.limit_key) == ("team-7", "u-1")
    assert sent.caller == Caller(ctx.invocation_id, ctx.invocation_id, 0)


def test_a_pending_call_suspends_again_without_journaling_anything() -> None:
    pending = JournalEntry(0, EntryKind.CALL, "Pricing/quote")
    ctx, journal = context(pending)
    with pytest.raises(Suspended):
        asyncio.run(two_calls(ctx))
    assert journal.entries == []


def test_a_completed_call_returns_its_output_and_the_next_call_follows() -> None:
    done = JournalEntry(0, EntryKind.CALL, "Pricing/quote", value=b"17")
    ctx, journal = context(done)
    with pytest.raises(Suspended) as suspended:
        asyncio.run(two_calls(ctx))
    assert suspended.value.awaiting_index == 1
    [entry] = journal.entries
    assert entry.name == "Stock/reserve" and entry.index == 1
    assert (
        CODEC.decode_request(
            entry.value or b"", headers=[], topic="t", partition=0, offset=0, timestamp_ms=0
        ).input
        == b"17"
    )
    both = context(done, replace(done, index=1, name="Stock/reserve", value=b'"ok"'))[0]
    assert asyncio.run(two_calls(both)) == (17, "ok")


def test_a_failed_callee_raises_terminal_error_in_the_caller() -> None:
    failed = JournalEntry(0, EntryKind.CALL, "Pricing/quote", failure=Failure("no price"))
    ctx, _ = context(failed)
    with pytest.raises(TerminalError, match="no price"):
        asyncio.run(two_calls(ctx))


def test_suspension_passes_through_except_exception() -> None:
    async def careless(ctx: Context) -> str:
        try:
            await ctx.service_call("Pricing/quote")
        except Exception:
            return "swallowed"
        return "done"

    with pytest.raises(Suspended):
        asyncio.run(careless(context()[0]))
