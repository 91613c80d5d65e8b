"""The worker on a real broker: replay, new steps, outcomes, co-partitioning, traces."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pipeline import Context, RetryableError, Service, TerminalError
from pipeline.codec.records import WireCodec
from pipeline.core.model import (
    AttemptAlive,
    AttemptCompleted,
    AttemptFailed,
    DispatchOrder,
    EntryAppended,
    EntryKind,
    InvocationRequest,
    JournalEntry,
    JournalRecord,
    Target,
)
from pipeline.runtime.worker import Worker
from pipeline.settings import Settings
from topics.provision import provision

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
RUN = EntryKind.RUN
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        runtime_partitions=2,
        results_partitions=2,
        worker_slots=4,
    )
    provision(kafka_bootstrap, settings.catalogue)
    return settings


@pytest.fixture
def codec() -> WireCodec:
    return WireCodec()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@contextmanager
def running_worker(
    settings: Settings,
    services: Sequence[Service],
    spans: InMemorySpanExporter,
    *,
    shutdown_grace_s: float = 5.0,
) -> Iterator[None]:
    """The worker on its own event loop in a thread, stopped (and checked) on exit."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    worker = Worker(settings, services, tracer_provider=provider, shutdown_grace_s=shutdown_grace_s)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(worker.run(stop))
        except BaseException as exc:  # re-raised in the test thread below
            errors.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="test-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(TIMEOUT_S)
    assert not thread.is_alive(), "the worker did not stop"
    if errors:
        raise errors[0]


def dispatch(
    settings: Settings, codec: WireCodec, partition: int, *values: DispatchOrder | bytes
) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for value in values:
        payload = value if isinstance(value, bytes) else codec.encode_dispatch(value)
        key = b"x" if isinstance(value, bytes) else value.request.partition_key.encode()
        producer.produce(settings.topic_names.dispatch, payload, key=key, partition=partition)
    assert producer.flush(TIMEOUT_S) == 0


def read_until(
    settings: Settings,
    topic: str,
    partition: int,
    done: Callable[[list[bytes]], bool],
) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"{settings.topic_prefix}test-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    values: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not done(values):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}[{partition}] after {TIMEOUT_S}s: {values}")
            msg = consumer.poll(0.1)
            value = msg.value() if msg is not None and msg.error() is None else None
            if value is not None:
                values.append(value)
    finally:
        consumer.close()
    return values


def read_journal(
    settings: Settings, codec: WireCodec, partition: int, outcomes: int, heartbeat: bool = False
) -> list[JournalRecord]:
    def enough(values: list[bytes]) -> bool:
        records = [codec.decode_journal(v) for v in values]
        return sum(isinstance(r, AttemptCompleted | AttemptFailed) for r in records) >= outcomes

    values = read_until(settings, settings.topic_names.journal, partition, enough)
    records = [codec.decode_journal(v) for v in values]
    # Heartbeats after the first depend on timing.
    first_heartbeat = records[:1] if heartbeat and isinstance(records[0], AttemptAlive) else []
    return [*first_heartbeat, *(r for r in records if not isinstance(r, AttemptAlive))]


def request(
    invocation_id: str, handler: str, data: bytes = b"{}", **kwargs: object
) -> InvocationRequest:
    return InvocationRequest(
        id=invocation_id,
        target=Target("checkout", handler),
        input=data,
        created_at_ms=1_700_000_000_000,
        **kwargs,  # type: ignore[arg-type]
    )


def by_name(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def test_a_dispatch_replays_its_journal_runs_new_steps_and_completes(
    settings: Settings, codec: WireCodec, spans: InMemorySpanExporter
) -> None:
    executed: list[str] = []
    checkout = Service("checkout")

    @checkout.handler()
    async def pay(ctx: Context, item: str) -> dict[str, object]:
        def charge() -> int:
            executed.append("charge")
            return 0  # the journal says 42: replay must win

        async def receipt() -> str:
            executed.append("receipt")
            return f"receipt for {item}"

        amount = await ctx.run("charge", charge)
        text = await ctx.run("receipt", receipt)
        return {"amount": amount, "receipt": text, "attempt": ctx.attempt}

    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01".encode()
    order = DispatchOrder(
        request("inv-1", "pay", b'"book"', headers=(("traceparent", traceparent),)),
        attempt=2,
        journal=(JournalEntry(0, RUN, "charge", value=b"42"),),
    )
    with running_worker(settings, [checkout], spans):
        dispatch(settings, codec, 1, order)
        journal = read_journal(settings, codec, 1, outcomes=1, heartbeat=True)

    assert executed == ["receipt"]
    assert journal == [
        # Taken: the first heartbeat goes out before the handler's first step.
        AttemptAlive("inv-1", 2),
        EntryAppended("inv-1", 2, JournalEntry(1, RUN, "receipt", value=b'"receipt for book"')),
        AttemptCompleted("inv-1", 2, b'{"amount":42,"receipt":"receipt for book","attempt":2}'),
    ]
    # The worker announced its services on the services topic.
    announced = read_until(settings, settings.topic_names.services, 0, lambda v: len(v) >= 1)
    assert [codec.decode_service(v) for v in announced] == [checkout.definition()]

    finished = spans.get_finished_spans()
    attempt = by_name(finished, "attempt checkout/pay")
    assert attempt.kind is SpanKind.CONSUMER
    assert attempt.parent is not None
    assert f"{attempt.parent.trace_id:032x}" == TRACE_ID
    assert f"{attempt.parent.span_id:016x}" == PARENT_SPAN_ID
    attributes = dict(attempt.attributes or {})
    assert attributes["pipeline.invocation_id"] == "inv-1"
    assert attributes["pipeline.attempt"] == 2
    assert attributes["pipeline.target"] == "checkout/pay"
    assert attempt.status.status_code is not StatusCode.ERROR
    assert attempt.context is not None
    for step, replayed in (("charge", True), ("receipt", False)):
        run = by_name(finished, f"run {step}")
        assert run.parent is not None and run.parent.span_id == attempt.context.span_id
        assert dict(run.attributes or {})["pipeline.replayed"] is replayed


def test_every_way_an_attempt_ends_is_journaled_on_the_dispatch_partition(
    settings: Settings, codec: WireCodec, spans: InMemorySpanExporter
) -> None:
    checkout = Service("checkout")

    @checkout.handler()
    async def decline(ctx: Context) -> None:
        await ctx.run("charge", _declined)

    @checkout.handler()
    async def later(ctx: Context) -> None:
        raise RetryableError("inventory busy", retry_after_ms=250)

    @checkout.handler()
    async def crash(ctx: Context) -> None:
        raise KeyError("sku")

    @checkout.handler()
    async def changed(ctx: Context) -> None:
        await ctx.run("renamed", lambda: 1)

    orders = [
        DispatchOrder(request("inv-decline", "decline"), 1),
        DispatchOrder(request("inv-later", "later"), 1),
        DispatchOrder(request("inv-crash", "crash"), 1),
        DispatchOrder(
            request("inv-changed", "changed"), 2, (JournalEntry(0, RUN, "original", b"1"),)
        ),
        DispatchOrder(InvocationRequest("inv-unknown", Target("billing", "charge"), b"", 0), 1),
        DispatchOrder(request("inv-badinput", "pay", b"{not json"), 1),
    ]

    @checkout.handler()
    async def pay(ctx: Context, item: str) -> str:
        return item

    with running_worker(settings, [checkout], spans):
        # An undecodable dispatch is skipped; the orders after it still run.
        dispatch(settings, codec, 0, b"\x00garbage", *orders)
        journal = read_journal(settings, codec, 0, outcomes=len(orders))

    failed = {r.invocation_id: r for r in journal if isinstance(r, AttemptFailed)}
    assert set(failed) == {o.request.id for o in orders}

    assert failed["inv-decline"].failure.terminal
    assert failed["inv-decline"].failure.message == "card declined"
    assert EntryAppended("inv-decline", 1, JournalEntry(0, RUN, "charge")) not in journal
    declined_entry = next(r for r in journal if isinstance(r, EntryAppended))
    assert declined_entry.entry.failure is not None and declined_entry.entry.failure.terminal

    assert not failed["inv-later"].failure.terminal
    assert failed["inv-later"].retry_after_ms == 250

    assert not failed["inv-crash"].failure.terminal
    assert failed["inv-crash"].failure.message == "KeyError: 'sku'"

    assert not failed["inv-changed"].failure.terminal
    assert "'original'" in failed["inv-changed"].failure.message
    assert "'renamed'" in failed["inv-changed"].failure.message

    assert not failed["inv-unknown"].failure.terminal
    assert "billing/charge" in failed["inv-unknown"].failure.message
    assert "checkout" in failed["inv-unknown"].failure.message

    assert failed["inv-badinput"].failure.terminal
    assert "checkout/pay" in failed["inv-badinput"].failure.message

    errored = [s for s in spans.get_finished_spans() if s.name.startswith("attempt ")]
    assert len(errored) == len(orders)
    assert all(s.status.status_code is StatusCode.ERROR for s in errored)


def _declined() -> int:
    raise TerminalError("card declined")


def test_an_attempt_still_running_at_shutdown_is_reported_failed(
    settings: Settings, codec: WireCodec, spans: InMemorySpanExporter
) -> None:
    checkout = Service("checkout")
    started = threading.Event()

    @checkout.handler()
    async def hang(ctx: Context) -> None:
        started.set()
        await asyncio.Event().wait()

    with running_worker(settings, [checkout], spans, shutdown_grace_s=0.2):
        dispatch(settings, codec, 1, DispatchOrder(request("inv-hang", "hang"), 3))
        assert started.wait(TIMEOUT_S)

    # Reported at once, so the scheduler need not wait out the lease to retry.
    journal = read_journal(settings, codec, 1, outcomes=1)
    assert len(journal) == 1 and isinstance(journal[0], AttemptFailed)
    assert journal[0].attempt == 3
    assert not journal[0].failure.terminal
    assert "stopped" in journal[0].failure.message


def test_offsets_are_committed_before_a_step_runs_and_only_for_free_slots(
    kafka_bootstrap: str, topic_prefix: str, codec: WireCodec, spans: InMemorySpanExporter
) -> None:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        runtime_partitions=2,
        results_partitions=2,
        worker_slots=1,
    )
    provision(kafka_bootstrap, settings.catalogue)
    dispatch_partition = TopicPartition(settings.topic_names.dispatch, 0)
    offsets = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": settings.topic_names.group("workers")}
    )
    seen_committed: dict[str, int] = {}
    release = threading.Event()
    checkout = Service("checkout")

    @checkout.handler()
    async def hold(ctx: Context) -> None:
        async def observe() -> None:
            [committed] = await asyncio.to_thread(offsets.committed, [dispatch_partition], 10.0)
            seen_committed[ctx.invocation_id] = committed.offset

        await ctx.run("observe", observe)
        await asyncio.to_thread(release.wait, TIMEOUT_S)

    try:
        with running_worker(settings, [checkout], spans):
            dispatch(
                settings,
                codec,
                0,
                DispatchOrder(request("inv-a", "hold"), 1),
                DispatchOrder(request("inv-b", "hold"), 1),
            )
            deadline = time.monotonic() + TIMEOUT_S
            while "inv-a" not in seen_committed and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.5)  # room for a worker that ignores its slots to take inv-b
            assert seen_committed == {"inv-a": 1}, "one slot: inv-b must wait in Kafka"
            release.set()
            journal = read_journal(settings, codec, 0, outcomes=2)
    finally:
        offsets.close()

    assert seen_committed == {"inv-a": 1, "inv-b": 2}
    assert [r.invocation_id for r in journal if isinstance(r, AttemptCompleted)] == [
        "inv-a",
        "inv-b",
    ]
