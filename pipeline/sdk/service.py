"""Services and their handlers, registered on explicit objects (no global registry).

Example:

    greeter = Service("greeter")

    @greeter.handler()
    async def greet(ctx: Context, name: str) -> str:
        return await ctx.run("compose", lambda: f"hello {name}")
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.core.model import HandlerDefinition, RetryPolicy, ServiceDefinition, Target
from pipeline.errors import TerminalError, ValidationError
from pipeline.sdk.context import Context
from pipeline.sdk.serde import JsonSerde, Serde

HandlerFn = TypeVar("HandlerFn", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler: the user's function and how its input and output travel."""

    service: str
    name: str
    fn: Callable[..., Awaitable[Any]]
    retry: RetryPolicy
    input_serde: Serde[Any]
    output_serde: Serde[Any]
    takes_request: bool

    @property
    def qualified_name(self) -> str:
        return f"{self.service}/{self.name}"

    def definition(self) -> HandlerDefinition:
        return HandlerDefinition(self.name, self.retry)

    async def invoke(self, ctx: Context, input: bytes) -> bytes:
        """Run the handler on serialized input; return its serialized output."""
        if self.takes_request:
            try:
                request = self.input_serde.deserialize(input)
            except Exception as exc:
                # The same bytes will never deserialize on a later attempt.
                raise TerminalError(
                    f"input of {self.qualified_name} cannot be read by {self.input_serde!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            result = await self.fn(ctx, request)
        else:
            result = await self.fn(ctx)
        try:
            return self.output_serde.serialize(result)
        except Exception as exc:
            raise TypeError(
                f"{self.qualified_name} returned a value that {self.output_serde!r} "
                f"cannot serialize: {exc}"
            ) from exc


class Service:
    """A named group of handlers. A keyed service runs each invocation for an object key."""

    def __init__(self, name: str, *, keyed: bool = False) -> None:
        Target(name, "handler")  # Target owns the naming rules; raises on a bad name
        self._name = name
        self._keyed = keyed
        self._handlers: dict[str, Handler] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def keyed(self) -> bool:
        return self._keyed

    @property
    def handlers(self) -> tuple[Handler, ...]:
        return tuple(self._handlers.values())

    def find(self, handler_name: str) -> Handler | None:
        return self._handlers.get(handler_name)

    def handler(
        self,
        name: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        input_serde: Serde[Any] | None = None,
        output_serde: Serde[Any] | None = None,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register `async def h(ctx, request)` or `async def h(ctx)`; returns it unchanged."""

        def register(fn: HandlerFn) -> HandlerFn:
            handler_name = name if name is not None else fn.__name__
            Target(self._name, handler_name)  # raises on a bad handler name
            if handler_name in self._handlers:
                raise ValidationError(
                    f"service {self._name!r} already has a handler named {handler_name!r}"
                )
            self._handlers[handler_name] = Handler(
                service=self._name,
                name=handler_name,
                fn=fn,
                retry=retry if retry is not None else RetryPolicy(),
                input_serde=input_serde if input_serde is not None else JsonSerde(),
                output_serde=output_serde if output_serde is not None else JsonSerde(),
                takes_request=_takes_request(f"{self._name}/{handler_name}", fn),
            )
            return fn

        return register

    def definition(self) -> ServiceDefinition:
        return ServiceDefinition(
            self._name,
            tuple(h.definition() for h in self._handlers.values()),
            keyed=self._keyed,
        )

    def __repr__(self) -> str:
        return f"Service({self._name!r}, keyed={self._keyed}, handlers={list(self._handlers)})"


def _takes_request(qualified_name: str, fn: Callable[..., Awaitable[Any]]) -> bool:
    usage = f"handler {qualified_name} must be `async def h(ctx)` or `async def h(ctx, request)`"
    if not inspect.iscoroutinefunction(fn):
        raise ValidationError(f"{usage}: it is not an async function")
    positional = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is p.empty]
    if not 1 <= len(required) <= 2 or len(positional) > 2:
        raise ValidationError(f"{usage}: it takes {len(positional)} positional parameters")
    return len(positional) == 2
