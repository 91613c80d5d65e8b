"""The example service `make run` starts: durable steps, a retryable and a terminal error."""

from __future__ import annotations

import random
from typing import Any

from pipeline import Context, RetryPolicy, Service, TerminalError

service = Service("Greeter")


@service.handler()
async def greet(ctx: Context, request: dict[str, Any]) -> dict[str, Any]:
    name = request.get("name")
    if not isinstance(name, str) or not name:
        raise TerminalError('request needs a non-empty "name", e.g. {"name": "Ada"}', code=400)
    # Each step runs once: on a retry its journaled result is replayed, not re-run.
    greeting = await ctx.run("compose", lambda: f"Hello, {name}!")
    lucky = await ctx.run("draw", lambda: random.randint(1, 100))
    return {"greeting": greeting, "lucky_number": lucky, "attempt": ctx.attempt}


@service.handler(retry=RetryPolicy(max_attempts=5, initial_interval_ms=200))
async def flaky(ctx: Context, request: dict[str, Any]) -> str:
    """Fails its first two attempts, to show retries with backoff in results and traces."""
    if ctx.attempt < 3:
        raise RuntimeError(f"attempt {ctx.attempt} failed on purpose")
    return f"succeeded on attempt {ctx.attempt}"
