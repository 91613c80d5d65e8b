"""The whole path on the real broker: client -> invocations -> scheduler -> dispatch ->
worker -> journal -> scheduler -> results, plus dead letters and idempotency."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline import Context, RetryPolicy, Service, TerminalError
from pipeline.client import Client, InvocationFailed
from pipeline.core.model import ResultStatus
from pipeline.core.partitioning import partition_for
from pipeline.settings import Settings
from tests.support.runtime import running_pipeline, runtime_settings

executions: Counter[str] = Counter()

service = Service("Shop")


@service.handler()
async def checkout(ctx: Context, order: dict[str, Any]) -> dict[str, Any]:
    executions[f"checkout:{order['order']}"] += 1
    total = await ctx.run("price", lambda: order["qty"] * 3)
    receipt = await ctx.run("receipt", lambda: f"R-{order['order']}-{total}")
    return {"total": total, "receipt": receipt}


@service.handler(retry=RetryPolicy(max_attempts=4, initial_interval_ms=10, max_interval_ms=50))
async def flaky(ctx: Context, key: str) -> str:
    step = await ctx.run("once", lambda: executions.update([f"flaky-step:{key}"]) or "done")
    if ctx.attempt < 3:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return f"{step} on attempt {ctx.attempt}"


@service.handler()
async def refuse(ctx: Context, reason: str) -> None:
    raise TerminalError(f"refused: {reason}", code=409)


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Iterator[Settings]:
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    with running_pipeline(settings, [service]):
        yield settings


def test_call_returns_the_handler_output(settings: Settings) -> None:
    with Client(settings) as client:
        assert client.call("Shop/checkout", {"order": "a1", "qty": 2}) == {
            "total": 6,
            "receipt": "R-a1-6",
        }


def test_retries_replay_journaled_steps(settings: Settings) -> None:
    with Client(settings) as client:
        assert client.call("Shop/flaky", "k1") == "done on attempt 3"
    # The step ran in attempt 1; attempts 2 and 3 replayed it from the journal.
    assert executions["flaky-step:k1"] == 1


def test_terminal_error_fails_without_retry(settings: Settings) -> None:
    with Client(settings) as client, pytest.raises(InvocationFailed) as failed:
        client.call("Shop/refuse", "out of stock")
    assert failed.value.result.attempts == 1
    assert failed.value.result.failure is not None
    assert "refused: out of stock" in failed.value.result.failure.message
    assert failed.value.result.failure.code == 409  # the handler's code, in the result


def test_a_key_on_an_unkeyed_service_fails_naming_the_problem(settings: Settings) -> None:
    with Client(settings) as client, pytest.raises(InvocationFailed) as failed:
        client.call("Shop/k1/checkout", {"order": "keyed", "qty": 1})
    failure = failed.value.result.failure
    assert failure is not None and failure.error_type == "InvalidTarget"
    assert "Shop is not a keyed service: call Shop/checkout, without the key 'k1'" in (
        failure.message
    )
    assert failed.value.result.attempts == 0 and executions["checkout:keyed"] == 0


def test_idempotency_key_runs_once_and_shares_the_result(settings: Settings) -> None:
    with Client(settings) as client:
        first = client.call("Shop/checkout", {"order": "idem", "qty": 1}, idempotency_key="k-1")
        second_id = client.send("Shop/checkout", {"order": "idem", "qty": 1}, idempotency_key="k-1")
        assert client.result(second_id).output == json.dumps(first, separators=(",", ":")).encode()
        # A third request to be sure the second one was seen and dropped by the scheduler.
        client.call("Shop/checkout", {"order": "after", "qty": 1})
    assert executions["checkout:idem"] == 1
    assert _results_for(settings, second_id) == 1


def test_json_records_from_any_producer(settings: Settings) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    body = {"target": "Shop/checkout", "input": {"order": "json", "qty": 5}, "id": "json-1"}
    # No explicit partition: librdkafka's default partitioner differs from Kafka's Java
    # one, so the scheduler has to forward the record to its home partition.
    producer.produce(
        settings.topic_names.invocations,
        json.dumps(body).encode(),
        b"some-other-key",
        headers=[("content-type", b"application/json")],
    )
    producer.flush(10)
    with Client(settings) as client:
        result = client.result("json-1")
    assert result.status is ResultStatus.COMPLETED
    assert json.loads(result.output or b"") == {"total": 15, "receipt": "R-json-15"}


def test_poison_records_go_to_dead_letter_and_processing_continues(settings: Settings) -> None:
    names = settings.topic_names
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    unknown_handler = {"target": "Shop/nope", "id": "dl-3"}
    poison = [
        (b"garbage \x00\xff", []),
        (b"\xc3\x01" + bytes(range(8)) + b"body", []),
        (json.dumps(unknown_handler).encode(), [("content-type", b"application/json")]),
    ]
    for value, headers in poison:
        partition = partition_for("dl-3", settings.runtime_partitions)
        producer.produce(names.invocations, value, b"dl-3", partition=partition, headers=headers)
    producer.flush(10)
    with Client(settings) as client:
        assert client.call("Shop/checkout", {"order": "after-poison", "qty": 1})["total"] == 3
        unknown = client.result("dl-3")
    assert unknown.status is ResultStatus.FAILED

    dead = _read_all(settings, names.dead_letter, expect=3)
    reasons = [dict(m.headers() or [])["dlq.reason"].decode() for m in dead]
    assert "C3 01" in reasons[0] or "marker" in reasons[0]
    assert "fingerprint" in reasons[1]
    assert "Shop/nope" in reasons[2]
    assert [m.value() for m in dead] == [value for value, _ in poison]


def _results_for(settings: Settings, invocation_id: str) -> int:
    messages = _read_all(settings, settings.topic_names.results, expect=None)
    return sum(1 for m in messages if m.key() == invocation_id.encode())


def _read_all(settings: Settings, topic: str, expect: int | None) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": "test-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
    messages: list[Any] = []
    deadline = time.monotonic() + 15
    idle_since = time.monotonic()
    while time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            if expect is None and time.monotonic() - idle_since > 1.5:
                break
            if expect is not None and len(messages) >= expect:
                break
            continue
        idle_since = time.monotonic()
        messages.append(message)
    consumer.close()
    if expect is not None:
        assert len(messages) == expect, [m.value() for m in messages]
    return messages
