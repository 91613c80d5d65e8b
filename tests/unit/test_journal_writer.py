"""The worker's journal writer lets a step execute only while the attempt's lease holds:
a worker that was frozen past its lease (SIGSTOP, a VM pause) and thaws must not run
the step's side effect again beside the next attempt, which replays or re-runs it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.codec.records import WireCodec
from pipeline.core.lease import AttemptLease
from pipeline.errors import LeaseLost
from pipeline.runtime.invoker import JournalPartition, KafkaJournalWriter
from pipeline.sdk import BytesSerde, Context
from tests.unit.test_context import order


class Unused:
    """No record is sent when the lease is already gone."""

    def send(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing may be sent")


def test_a_step_does_not_execute_once_the_lease_ran_out() -> None:
    now = [10_000]
    lease = AttemptLease.dispatched(
        0, lease_timeout_ms=5_000, heartbeat_timeout_ms=3_000, margin_ms=500
    )

    async def scenario() -> None:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        done.set_result(True)
        writer = KafkaJournalWriter(
            Unused(),  # type: ignore[arg-type]
            WireCodec(),
            JournalPartition("journal", 0, b"k"),
            order(),
            lease,
            done,
            clock=lambda: now[0],
        )
        ctx = Context(order(), writer)
        executed: list[str] = []

        def effect() -> bytes:
            executed.append("effect")
            return b""

        with pytest.raises(LeaseLost, match="lease of attempt 3 ran out before its next step"):
            await ctx.run("effect", effect, serde=BytesSerde())
        assert executed == []

    asyncio.run(scenario())
