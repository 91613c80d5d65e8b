"""What a handler sees of its invocation, and `ctx.run`, the durable step.

`ctx.run` keeps one promise: a step whose result the handler has seen is never executed
again. So a new step's result is handed to the handler only after Kafka acknowledged its
journal entry, and a recorded step returns its recorded outcome without running.

Steps are numbered in the order the handler starts them. Their journal entries are sent
in that same order, even when steps run concurrently (`asyncio.gather`), because the
scheduler appends entries densely by index.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast, overload

from opentelemetry.trace import NoOpTracer, Tracer

from pipeline.core.ids import sent_id
from pipeline.core.model import (
    DEFAULT_PRIORITY,
    Caller,
    DispatchOrder,
    EntryAppended,
    EntryKind,
    Failure,
    Headers,
    InvocationRequest,
    JournalEntry,
    Target,
    validate_scope,
)
from pipeline.core.payload import (
    PayloadLimits,
    cut_failure,
    entry_bytes,
    journal_bytes,
    journal_too_large,
)
from pipeline.core.replay import JournalMismatch, expect_entry
from pipeline.errors import NonDeterminismError, PayloadTooLarge, Suspended, TerminalError
from pipeline.sdk.errors import AttemptBroken
from pipeline.sdk.serde import BytesSerde, JsonSerde, Serde

T = TypeVar("T")


class JournalWriter(Protocol):
    """Where `ctx.run` sends the journal entries of new steps (Kafka, in the worker)."""

    def ready(self) -> Awaitable[None]:
        """Completes once a new step may execute; raises if none may.

        The worker lets a handler start before its dispatch's offset commit has landed
        and holds the first new step here until it has.
        """
        ...

    def append(self, record: EntryAppended) -> Awaitable[None]:
        """Send `record` now, ordered after every record appended before it.

        The awaitable completes once the journal acknowledged the record durably and
        raises when it could not be written.
        """
        ...


class Context:
    """One attempt of one invocation, as its handler sees it.

    Built by the worker from a dispatch order; replays `order.journal`.
    """

    def __init__(
        self,
        order: DispatchOrder,
        journal_writer: JournalWriter,
        *,
        tracer: Tracer | None = None,
        default_serde: Serde[object] | None = None,
        request_encoder: Callable[[InvocationRequest], bytes] | None = None,
        clock_ms: Callable[[], int] | None = None,
        limits: PayloadLimits | None = None,
    ) -> None:
        self._request_encoder = request_encoder
        self._limits = limits if limits is not None else PayloadLimits()
        self._journal_bytes = journal_bytes(order.journal)
        self._clock_ms = clock_ms
        self._order = order
        self._writer = journal_writer
        self._tracer: Tracer = tracer if tracer is not None else NoOpTracer()
        self._default_serde: Serde[object] = (
            default_serde if default_serde is not None else JsonSerde()
        )
        self._next_index = 0
        # Set by each step once its entry was handed to the writer (or will never be),
        # so that the next step's entry follows it.
        self._last_turn: asyncio.Event | None = None
        self._last_acked = -1  # index of the last entry the journal acknowledged
        self._failed_step: tuple[int, str] | None = None
        self._nondeterminism: NonDeterminismError | None = None

    @property
    def invocation_id(self) -> str:
        return self._order.request.id

    @property
    def attempt(self) -> int:
        return self._order.attempt

    @property
    def target(self) -> Target:
        return self._order.request.target

    @property
    def key(self) -> str | None:
        """The object key of a keyed service's invocation; None for unkeyed services."""
        return self._order.request.target.key

    @property
    def headers(self) -> Headers:
        return self._order.request.headers

    @property
    def nondeterminism(self) -> NonDeterminismError | None:
        """The replay mismatch this attempt hit, if any.

        The worker fails the attempt with it even when the handler caught it: outcomes
        computed from a journal the code no longer matches must not become results.
        """
        return self._nondeterminism

    def scope(self, scope: str) -> ScopedSender:
        """Invocations sent through the result go to virtual queues of `scope`."""
        return ScopedSender(self, validate_scope(scope))

    async def send(
        self,
        target: str | Target,
        payload: object = None,
        *,
        scope: str | None = None,
        limit_key: str | None = None,
        priority: int = DEFAULT_PRIORITY,
        serde: Serde[object] | None = None,
    ) -> str:
        """Invoke `target` one way, exactly once, and return the new invocation's id.

        The request is journaled like a step; the scheduler emits it when it accepts the
        entry, in the same transaction, so a retried handler that replays this call sends
        nothing again and gets the same id back.
        """
        parsed = Target.parse(target) if isinstance(target, str) else target
        invocation_id = sent_id(self.invocation_id, self._next_index)
        request = self._request_factory(
            invocation_id, parsed, payload, serde, scope, limit_key, priority
        )
        await self._step(EntryKind.SEND, str(parsed), request, BytesSerde())
        return invocation_id

    async def service_call(
        self,
        target: str | Target,
        payload: object = None,
        *,
        scope: str | None = None,
        limit_key: str | None = None,
        priority: int = DEFAULT_PRIORITY,
        serde: Serde[object] | None = None,
    ) -> Any:
        """Invoke `target` exactly once and return its output (deserialized with `serde`,
        JSON by default); a callee that fails makes this raise `TerminalError`.

        The call is journaled like `send`. Until the callee has ended, the attempt
        suspends here: it stops, freeing the worker (and its queue's concurrency slot,
        unless the rule says `hold_while_suspended`), and the invocation runs again
        from the top once the result is in, replaying its journal to this point.
        """
        parsed = Target.parse(target) if isinstance(target, str) else target
        index = self._next_index
        request = self._request_factory(
            sent_id(self.invocation_id, index),
            parsed,
            payload,
            serde,
            scope,
            limit_key,
            priority,
            caller=Caller(self.invocation_id, self._order.request.partition_key, index),
        )
        outcome_serde = serde if serde is not None else self._default_serde
        return await self._step(
            EntryKind.CALL, str(parsed), request, BytesSerde(), outcome_serde=outcome_serde
        )

    def _request_factory(
        self,
        invocation_id: str,
        target: Target,
        payload: object,
        serde: Serde[object] | None,
        scope: str | None,
        limit_key: str | None,
        priority: int,
        caller: Caller | None = None,
    ) -> Callable[[], bytes]:
        """The encoded request a send or call journals, built when its step executes."""

        def request() -> bytes:
            if self._request_encoder is None or self._clock_ms is None:
                raise RuntimeError("this context cannot send: it has no request encoder")
            return self._request_encoder(
                InvocationRequest(
                    id=invocation_id,
                    target=target,
                    input=(serde or self._default_serde).serialize(payload),
                    created_at_ms=self._clock_ms(),
                    headers=self.headers,
                    scope=scope,
                    limit_key=limit_key,
                    priority=priority,
                    caller=caller,
                )
            )

        return request

    # Two overloads so that type checkers infer T from an async action's result rather
    # than from the coroutine object itself.
    @overload
    async def run(
        self, name: str, action: Callable[[], Awaitable[T]], *, serde: Serde[T] | None = None
    ) -> T: ...

    @overload
    async def run(
        self, name: str, action: Callable[[], T], *, serde: Serde[T] | None = None
    ) -> T: ...

    async def run(
        self,
        name: str,
        action: Callable[[], T | Awaitable[T]],
        *,
        serde: Serde[T] | None = None,
    ) -> T:
        """Run `action` once, durably: its outcome is journaled and replayed after that.

        A `TerminalError` raised by `action` is journaled too and raised again on every
        replay. Any other exception propagates unjournaled, so the attempt fails and the
        step runs again on the next attempt; later steps of this attempt then raise
        `AttemptBroken` rather than leave a gap in the journal.
        """
        step_serde = serde if serde is not None else cast(Serde[T], self._default_serde)
        return cast(T, await self._step(EntryKind.RUN, name, action, step_serde))

    async def _step(
        self,
        kind: EntryKind,
        name: str,
        action: Callable[[], T | Awaitable[T]],
        step_serde: Serde[T],
        *,
        outcome_serde: Serde[Any] | None = None,
    ) -> Any:
        """Execute or replay one step. A call's entry holds the request when journaled
        and the callee's outcome once complete, read with `outcome_serde`."""
        index = self._next_index
        try:
            recorded = expect_entry(self._order.journal, index, kind, name)
        except JournalMismatch as exc:
            self._nondeterminism = exc
            raise
        self._next_index += 1
        previous, turn = self._last_turn, asyncio.Event()
        self._last_turn = turn
        with self._tracer.start_as_current_span(
            f"{kind.value} {name}",
            attributes={
                "pipeline.step.index": index,
                "pipeline.replayed": recorded is not None,
            },
        ):
            if recorded is not None:
                turn.set()
                if recorded.is_pending_call:
                    raise Suspended(index)
                return _replayed(recorded, outcome_serde or step_serde)
            try:
                value = await self._execute(index, kind, name, action, step_serde, previous)
                if kind is EntryKind.CALL:
                    # Journaled just now: the callee cannot have ended yet.
                    raise Suspended(index)
                return value
            except BaseException:
                # A journaled terminal failure is an outcome like any value; only a step
                # that left no entry breaks the journal's order.
                if self._failed_step is None and self._last_acked < index:
                    self._failed_step = (index, name)
                raise
            finally:
                turn.set()

    async def _execute(
        self,
        index: int,
        kind: EntryKind,
        name: str,
        action: Callable[[], T | Awaitable[T]],
        serde: Serde[T],
        previous: asyncio.Event | None,
    ) -> T:
        self._raise_if_broken(index, name)
        await self._writer.ready()
        try:
            outcome = action()
            value = await outcome if inspect.isawaitable(outcome) else outcome
        except TerminalError as exc:
            failure = cut_failure(
                Failure(exc.message, type(exc).__name__, terminal=True, code=exc.code),
                self._limits,
            )
            await self._journal(JournalEntry(index, kind, name, failure=failure), previous)
            raise TerminalError(exc.message, code=exc.code) from exc
        value = cast(T, value)
        try:
            data = serde.serialize(value)
        except Exception as exc:
            raise TypeError(
                f"step {index} {name!r} returned a value that {serde!r} cannot serialize: {exc}"
            ) from exc
        await self._journal(JournalEntry(index, kind, name, value=data), previous)
        return value

    async def _journal(self, entry: JournalEntry, previous: asyncio.Event | None) -> None:
        if previous is not None:
            await previous.wait()
        # A step before this one may have failed while this one ran concurrently.
        self._raise_if_broken(entry.index, entry.name)
        too_large = journal_too_large(self._journal_bytes, entry, self._limits)
        if too_large is not None:
            # The scheduler would refuse the entry and fail the invocation; saying so
            # here lets the handler see why, at the step.
            raise PayloadTooLarge(too_large)
        self._journal_bytes += entry_bytes(entry)
        record = EntryAppended(self.invocation_id, self.attempt, entry)
        # The next step sends only after this ack: were this entry lost after the next
        # one was written, the journal would have a gap behind a step the handler saw.
        await self._writer.append(record)
        self._last_acked = entry.index

    def _raise_if_broken(self, index: int, name: str) -> None:
        if self._failed_step is not None:
            failed_index, failed_name = self._failed_step
            raise AttemptBroken(index, name, failed_index=failed_index, failed_name=failed_name)


def _replayed(recorded: JournalEntry, serde: Serde[Any]) -> Any:
    if recorded.failure is not None:
        # Only terminal failures are journaled; a recorded one fails the same way again.
        code = recorded.failure.code
        if code is None:  # journaled before failures kept their code
            raise TerminalError(recorded.failure.message)
        raise TerminalError(recorded.failure.message, code=code)
    return serde.deserialize(recorded.value if recorded.value is not None else b"")


class ScopedSender:
    """`ctx.scope("team-7").send(...)` and `.service_call(...)`: invocations into
    virtual queues of one scope."""

    def __init__(self, ctx: Context, scope: str) -> None:
        self._ctx = ctx
        self._scope = scope

    async def send(
        self,
        target: str | Target,
        payload: object = None,
        *,
        limit_key: str | None = None,
        priority: int = DEFAULT_PRIORITY,
    ) -> str:
        return await self._ctx.send(
            target, payload, scope=self._scope, limit_key=limit_key, priority=priority
        )

    async def service_call(
        self,
        target: str | Target,
        payload: object = None,
        *,
        limit_key: str | None = None,
        priority: int = DEFAULT_PRIORITY,
    ) -> Any:
        return await self._ctx.service_call(
            target, payload, scope=self._scope, limit_key=limit_key, priority=priority
        )
