"""No record a producer or a misbehaving worker writes stops the scheduler.

Each class of record that once stopped it (a header name that is not UTF-8, JSON
nested thousands deep, a record just under the broker's size limit, an output or a
step too large for the state record) is written from outside, interleaved with 200
good invocations, at a scheduler running as its own process. Each bad record ends as a
dead-letter record or a failed result that names the problem; the scheduler keeps its
PID; every good invocation completes once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pipeline import Context, Service
from pipeline.codec.records import WireCodec
from pipeline.core.model import (
    AttemptCompleted,
    EntryAppended,
    EntryKind,
    JournalEntry,
    ResultStatus,
)
from pipeline.core.partitioning import partition_for
from pipeline.settings import Settings
from tests.support.raw_producer import produce_raw
from tests.support.runtime import SchedulerProcess, register, running_worker, runtime_settings
from tests.support.topics import Outcomes
from topics.provision import provision

GOOD = 200
JSON = [("content-type", b"application/json")]
BIG = 1_000_400  # just under the broker's default record limit

service = Service("Poison")
started: dict[str, threading.Event] = {}


@service.handler()
async def echo(ctx: Context, value: object) -> object:
    return value


@service.handler()
async def inflate(ctx: Context, size: int) -> str:
    return "x" * size


@service.handler()
async def big_step(ctx: Context, size: int) -> str:
    step: str = await ctx.run("big", lambda: "y" * size)
    return step[:10]


@service.handler()
async def hold(ctx: Context, name: str) -> str:
    started.setdefault(name, threading.Event()).set()
    await asyncio.sleep(30)
    return "held"


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Settings:
    return runtime_settings(kafka_bootstrap, topic_prefix)


@pytest.fixture
def scheduler(settings: Settings, tmp_path: Path) -> Iterator[SchedulerProcess]:
    provision(settings.kafka_bootstrap_servers, settings.catalogue)
    register(settings, [service])
    process = SchedulerProcess(settings, "poison", tmp_path / "scheduler.log")
    try:
        yield process
    finally:
        process.stop()


def _producer(settings: Settings) -> Producer:
    return Producer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "message.max.bytes": 2_000_000}
    )


def _json(target: str, value: object, invocation_id: str) -> bytes:
    return json.dumps({"target": target, "input": value, "id": invocation_id}).encode()


def _produce(settings: Settings, producer: Producer, partition: int, value: bytes) -> int:
    """Produce to `partition` of invocations; the record's offset."""
    offsets: list[int] = []

    def delivered(error: object, message: object) -> None:
        assert error is None, error
        offsets.append(message.offset())  # type: ignore[attr-defined]

    producer.produce(
        settings.topic_names.invocations,
        value,
        partition=partition,
        headers=JSON,
        on_delivery=delivered,
    )
    producer.flush(30)
    return offsets[0]


def test_poison_invocation_records_are_dead_lettered_or_failed(
    settings: Settings, scheduler: SchedulerProcess
) -> None:
    pid = scheduler.pid
    producer = _producer(settings)
    invocations = settings.topic_names.invocations
    outcomes = Outcomes(settings)
    expected_dead: dict[tuple[int, int], str] = {}
    with running_worker(settings, [service]):
        for i in range(GOOD):
            producer.produce(
                invocations, _json("Poison/echo", i, f"good-{i}"), partition=i % 4, headers=JSON
            )
            if i == 20:  # a header name that is not UTF-8, on a valid request
                produce_raw(
                    settings.kafka_bootstrap_servers,
                    invocations,
                    1,
                    b"k",
                    _json("Poison/echo", 1, "bad-header"),
                    [(b"\xff\xfebad", b"v"), (b"content-type", b"application/json")],
                )
                expected_dead[(1, -1)] = "headers cannot be read"
            if i == 60:  # JSON nested 5,000 deep, 10 KB
                deep = b'{"target": "Poison/echo", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}"
                expected_dead[(2, _produce(settings, producer, 2, deep))] = "nested"
            if i == 100:  # just under the broker's record limit, on a partition not its home
                value = _json("Poison/echo", "z" * BIG, "too-big")
                home = partition_for("too-big", settings.runtime_partitions)
                where = (home + 1) % settings.runtime_partitions
                expected_dead[(where, _produce(settings, producer, where, value))] = (
                    "max_request_bytes"
                )
            if i == 140:  # a 600 KB input: over the request limit as well
                value = _json("Poison/echo", "w" * 600_000, "large-input")
                expected_dead[(3, _produce(settings, producer, 3, value))] = "max_request_bytes"
        for target, size, invocation_id in (
            ("Poison/inflate", 600_000, "large-output"),
            ("Poison/big_step", 500_000, "large-step"),
        ):
            producer.produce(invocations, _json(target, size, invocation_id), headers=JSON)
        # Forwarded first (the wrong partition for its id), then refused at home.
        unknown = _json("Nobody/here", 1, "unknown-handler")
        home = partition_for("unknown-handler", settings.runtime_partitions)
        where = (home + 1) % settings.runtime_partitions
        expected_dead[(where, _produce(settings, producer, where, unknown))] = "no handler"
        producer.flush(30)

        def settled() -> bool:
            ids = {r.invocation_id for r in outcomes.results()}
            good = all(f"good-{i}" in ids for i in range(GOOD))
            return (
                good
                and {"large-output", "large-step"} <= ids
                and len(outcomes.dead_letters()) >= len(expected_dead)
            )

        outcomes.wait_until(settled, 90, "every good result and every dead letter")

    results = outcomes.results()
    counts = Counter(r.invocation_id for r in results)
    assert all(counts[f"good-{i}"] == 1 for i in range(GOOD)), counts
    by_id = {r.invocation_id: r for r in results}
    assert all(by_id[f"good-{i}"].status is ResultStatus.COMPLETED for i in range(GOOD))
    for invocation_id, limit in (
        ("large-output", "max_output_bytes=262144"),
        ("large-step", "max_journal_bytes=393216"),
    ):
        failure = by_id[invocation_id].failure
        assert failure is not None and failure.error_type == "PayloadTooLarge", failure
        assert limit in failure.message, failure.message
    assert not {"bad-header", "too-big", "large-input"} & counts.keys()
    # An unknown handler is an invocation refused at once: its caller gets the failure,
    # and the record is kept on the dead-letter topic for a replay once it is deployed.
    refused = by_id["unknown-handler"].failure
    assert refused is not None and refused.error_type == "HandlerNotFound"

    dead = {d.coordinates: d for d in outcomes.dead_letters()}
    for (partition, offset), reason in expected_dead.items():
        if offset == -1:  # produced outside the client: found by its reason
            letter = next(d for d in dead.values() if reason in d.reason)
            assert letter.coordinates[0] == partition
            assert "dlq.unreadable" in letter.headers
            continue
        letter = dead[(partition, offset)]
        assert reason in letter.reason, letter.reason
    # The forwarded record is kept as it first arrived: its own bytes and headers.
    letter = next(d for d in dead.values() if "no handler" in d.reason)
    assert letter.value == unknown
    assert letter.headers["content-type"] == b"application/json"
    assert not any(name.startswith("pipeline.origin") for name in letter.headers)
    too_big = next(d for d in dead.values() if d.coordinates[1] >= 0 and "too-big" in d.reason)
    assert too_big.value is not None and len(too_big.value) > BIG
    assert scheduler.pid == pid and scheduler.alive
    outcomes.close()


def test_poison_journal_records_fail_their_invocation_or_are_dead_lettered(
    settings: Settings, scheduler: SchedulerProcess
) -> None:
    """What a misbehaving worker could write to `journal`, about attempts in flight."""
    pid = scheduler.pid
    codec = WireCodec()
    producer = _producer(settings)
    names = settings.topic_names
    outcomes = Outcomes(settings)
    with running_worker(settings, [service]):
        held = ["held-step", "held-output", "held-header"]
        for name in held:
            started[name] = threading.Event()
            producer.produce(names.invocations, _json("Poison/hold", name, name), headers=JSON)
        producer.flush(30)
        for name in held:
            assert started[name].wait(30), f"{name} never started"

        def journal(invocation_id: str, value: bytes, headers: list[tuple[bytes, bytes]]) -> None:
            partition = partition_for(invocation_id, settings.runtime_partitions)
            produce_raw(
                settings.kafka_bootstrap_servers,
                names.journal,
                partition,
                invocation_id.encode(),
                value,
                headers,
            )

        for i in range(GOOD):
            producer.produce(
                names.invocations,
                _json("Poison/echo", i, f"good-{i}"),
                partition=i % 4,
                headers=JSON,
            )
            if i == 50:
                big = JournalEntry(0, EntryKind.RUN, "big", value=b"s" * BIG)
                journal("held-step", codec.encode_journal(EntryAppended("held-step", 1, big)), [])
            if i == 100:
                output = AttemptCompleted("held-output", 1, b"o" * 600_000)
                journal("held-output", codec.encode_journal(output), [])
            if i == 150:
                done = codec.encode_journal(AttemptCompleted("held-header", 1, b'"ok"'))
                journal("held-header", done, [(b"\xff\xfebad", b"v")])
                journal("held-header", b"\x00garbage, not Avro", [])
        producer.flush(30)

        def settled() -> bool:
            ids = {r.invocation_id for r in outcomes.results()}
            return (
                all(f"good-{i}" in ids for i in range(GOOD))
                and {"held-step", "held-output"} <= ids
                and len(outcomes.dead_letters()) >= 2
            )

        outcomes.wait_until(settled, 90, "every good result and the poisoned attempts")

    by_id = {r.invocation_id: r for r in outcomes.results()}
    counts = Counter(r.invocation_id for r in outcomes.results())
    assert all(counts[f"good-{i}"] == 1 for i in range(GOOD)), counts
    for invocation_id, limit in (
        ("held-step", "max_journal_bytes"),
        ("held-output", "max_output_bytes"),
    ):
        failure = by_id[invocation_id].failure
        assert failure is not None and failure.error_type == "PayloadTooLarge", failure
        assert limit in failure.message
    reasons = [d.reason for d in outcomes.dead_letters()]
    assert any("headers cannot be read" in r for r in reasons), reasons
    assert any("not Avro" in r or "marker" in r for r in reasons), reasons
    # The record with the unreadable header did not complete its invocation.
    assert by_id.get("held-header") is None or by_id["held-header"].output != b'"ok"'
    assert scheduler.pid == pid and scheduler.alive
    outcomes.close()


def test_poison_dispatch_records_are_dead_lettered_by_the_worker(
    settings: Settings, scheduler: SchedulerProcess
) -> None:
    producer = _producer(settings)
    names = settings.topic_names
    outcomes = Outcomes(settings)
    with running_worker(settings, [service]):
        for partition, headers in ((0, [(b"\xff\xfebad", b"v")]), (1, [])):
            produce_raw(
                settings.kafka_bootstrap_servers,
                names.dispatch,
                partition,
                b"k",
                b"\xc3\x01not a dispatch order",
                headers,
            )
        for i in range(20):
            producer.produce(names.invocations, _json("Poison/echo", i, f"after-{i}"), headers=JSON)
        producer.flush(30)

        def settled() -> bool:
            ids = {r.invocation_id for r in outcomes.results()}
            dispatch = [
                d
                for d in outcomes.dead_letters()
                if d.headers.get("dlq.topic") == names.dispatch.encode()
            ]
            return {f"after-{i}" for i in range(20)} <= ids and len(dispatch) >= 2

        outcomes.wait_until(settled, 60, "the dispatch dead letters and 20 results")
    letters = [
        d for d in outcomes.dead_letters() if d.headers.get("dlq.topic") == names.dispatch.encode()
    ]
    assert all("undecodable" in d.reason for d in letters)
    assert any("dlq.unreadable" in d.headers for d in letters)
    outcomes.close()
