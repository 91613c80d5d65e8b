"""Handlers the benchmarks run: a no-op and a ten-step one."""

from __future__ import annotations

from pipeline import Context, Service

service = Service("Bench")


@service.handler()
async def noop(ctx: Context, request: int) -> int:
    return request


@service.handler()
async def steps(ctx: Context, request: int) -> int:
    total = 0
    for i in range(10):
        total += await ctx.run(f"s{i}", lambda i=i: i)
    return total
