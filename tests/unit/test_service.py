"""Services register handlers on explicit objects and describe themselves to the runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from pipeline import RetryPolicy, Service, TerminalError
from pipeline.core.model import (
    DispatchOrder,
    EntryAppended,
    HandlerDefinition,
    InvocationRequest,
    ServiceDefinition,
    Target,
)
from pipeline.errors import ValidationError
from pipeline.sdk import BytesSerde, Context, JsonSerde


class NoJournal:
    async def ready(self) -> None:
        return None

    def append(self, record: EntryAppended) -> Awaitable[None]:
        raise AssertionError("these handlers take no steps")


def context() -> Context:
    request = InvocationRequest("inv-1", Target("greeter", "greet"), b"", created_at_ms=0)
    return Context(DispatchOrder(request, 1), NoJournal())


def test_a_service_describes_its_handlers_and_retry_policies() -> None:
    counters = Service("counter", keyed=True)
    fast = RetryPolicy(max_attempts=3)

    @counters.handler(retry=fast)
    async def add(ctx: Context, amount: int) -> int:
        return amount

    @counters.handler("get")
    async def read(ctx: Context) -> int:
        return 0

    assert counters.definition() == ServiceDefinition(
        "counter", (HandlerDefinition("add", fast), HandlerDefinition("get")), keyed=True
    )
    assert counters.find("get") is not None and counters.find("read") is None


def test_the_decorator_returns_the_function_unchanged() -> None:
    svc = Service("greeter")

    async def greet(ctx: Context, name: str) -> str:
        return f"hello {name}"

    assert svc.handler()(greet) is greet


def test_handlers_with_and_without_a_request_are_invoked_with_their_serdes() -> None:
    svc = Service("greeter")

    @svc.handler()
    async def greet(ctx: Context, name: str) -> str:
        return f"hello {name}"

    @svc.handler(input_serde=BytesSerde(), output_serde=BytesSerde())
    async def echo(ctx: Context, data: bytes) -> bytes:
        return data[::-1]

    @svc.handler()
    async def ping(ctx: Context) -> str:
        return "pong"

    def invoke(name: str, data: bytes) -> bytes:
        handler = svc.find(name)
        assert handler is not None
        return asyncio.run(handler.invoke(context(), data))

    assert invoke("greet", b'"ada"') == b'"hello ada"'
    assert invoke("echo", b"\x01\x02") == b"\x02\x01"
    assert invoke("ping", b"ignored") == b'"pong"'


def test_undecodable_input_is_a_terminal_error_naming_handler_and_serde() -> None:
    svc = Service("greeter")

    @svc.handler()
    async def greet(ctx: Context, name: str) -> str:
        return name

    handler = svc.find("greet")
    assert handler is not None
    with pytest.raises(TerminalError) as caught:
        asyncio.run(handler.invoke(context(), b"{not json"))
    assert "greeter/greet" in caught.value.message
    assert "JsonSerde()" in caught.value.message
    assert "JSONDecodeError" in caught.value.message


def test_json_serde_is_compact_and_reads_empty_input_as_none() -> None:
    serde = JsonSerde()
    assert serde.serialize({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'.encode()
    assert serde.deserialize(b"") is None


def test_bad_registrations_are_rejected_with_the_reason() -> None:
    svc = Service("greeter")

    @svc.handler()
    async def greet(ctx: Context) -> None:
        return None

    with pytest.raises(ValidationError, match="already has a handler named 'greet'"):
        svc.handler("greet")(greet)

    def sync(ctx: Context) -> None:
        return None

    with pytest.raises(ValidationError, match="not an async function"):
        svc.handler()(sync)  # type: ignore[type-var]

    async def three(ctx: Context, a: int, b: int) -> None:
        return None

    with pytest.raises(ValidationError, match="3 positional"):
        svc.handler()(three)

    with pytest.raises(ValidationError, match="handler name"):
        svc.handler("has space")(greet)

    with pytest.raises(ValidationError, match="service name"):
        Service("bad/name")
