"""The service of the kill -9 tests: three steps with side effects outside Kafka.

Every execution of a step and every result a handler received is appended to the file
named by $CRASH_LOG, so the test can prove that no step whose result a handler had
seen was executed again; every start of an attempt of `hold` too, with the worker's
pid and the time, so a test can measure how soon a dead worker's attempts run again.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from pipeline import Context, Service

service = Service("Crash")


def _append(line: str) -> None:
    # O_APPEND writes of one short line are atomic, so concurrent processes never
    # interleave within a line.
    fd = os.open(os.environ["CRASH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def _three_steps(ctx: Context, request: int, pause_s: float) -> int:
    total = 0
    for step in range(3):

        def execute(step: int = step) -> str:
            token = uuid.uuid4().hex[:12]
            _append(f"exec {ctx.invocation_id} {step} {token}")
            return token

        token = await ctx.run(f"step-{step}", execute)
        _append(f"seen {ctx.invocation_id} {step} {token}")
        total += step
        await asyncio.sleep(pause_s)
    return request + total


@service.handler()
async def work(ctx: Context, request: int) -> int:
    # Work in flight at any moment, so that every kill lands in the middle of some.
    return await _three_steps(ctx, request, 0.01)


@service.handler()
async def paced(ctx: Context, pause_s: float) -> int:
    # Steps further apart than the heartbeat timeout: only heartbeats keep the lease.
    return await _three_steps(ctx, 0, pause_s)


@service.handler()
async def hold(ctx: Context, seconds: float) -> str:
    # A step first: once it returns, the scheduler knows this worker took the attempt.
    await ctx.run("begin", lambda: None)
    _append(f"start {ctx.invocation_id} {os.getpid()} {time.time():.3f}")
    await asyncio.sleep(seconds)
    return "held"
