"""Fuzz the invocations topic of a running scheduler process with hypothesis.

Records with keys of any bytes, header lists with names and values of any bytes,
values of random bytes, mutated valid Avro, and JSON of any shape, depth and size up
to the request limit, interleaved with good requests. The scheduler process never
dies (same PID throughout) and every record ends once: a result for the invocation it
decodes to, or a dead-letter record at its coordinates (both for a request to an
unknown handler, which fails at once and is kept for replay).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipeline import Context, Service
from pipeline.codec.records import WireCodec
from pipeline.core.model import InvocationRequest, Target
from pipeline.core.payload import request_too_large
from pipeline.errors import DecodeError
from pipeline.runtime.consumed import read_record
from pipeline.runtime.scheduler.outbox import ORIGIN_HEADER
from pipeline.settings import Settings
from tests.support.raw_producer import RawProducer
from tests.support.runtime import SchedulerProcess, register, running_worker, runtime_settings
from tests.support.topics import Outcomes
from topics.provision import provision

PARTITIONS = 4
service = Service("Fuzz")


@service.handler()
async def echo(ctx: Context, value: object) -> object:
    return value


@dataclass
class Runtime:
    settings: Settings
    scheduler: SchedulerProcess
    pid: int
    producer: RawProducer
    outcomes: Outcomes


@pytest.fixture(scope="module")
def runtime(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    prefix = f"fuzz{uuid.uuid4().hex[:6]}."
    settings = runtime_settings(kafka_bootstrap, prefix, runtime_partitions=PARTITIONS)
    provision(kafka_bootstrap, settings.catalogue)
    register(settings, [service])
    log = tmp_path_factory.mktemp("fuzz") / "scheduler.log"
    scheduler = SchedulerProcess(settings, "fuzz", Path(log))
    producer = RawProducer(kafka_bootstrap)
    outcomes = Outcomes(settings)
    try:
        with running_worker(settings, [service]):
            yield Runtime(settings, scheduler, scheduler.pid, producer, outcomes)
    finally:
        producer.close()
        outcomes.close()
        scheduler.stop()


_CODEC = WireCodec()
_JSON_HEADER = (b"content-type", b"application/json")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
nesting = st.integers(1, 6_000).map(lambda depth: "[" * depth + "]" * depth)
big_text = st.integers(200_000, 300_000).map(lambda size: "b" * size)  # around the limit
keys = st.none() | st.binary(max_size=40)
# Mostly text names, so that unreadable headers do not hide every other class.
header_names = st.one_of(
    *[st.text(min_size=1, max_size=20).map(lambda t: t.encode(errors="surrogatepass"))] * 4,
    st.binary(min_size=1, max_size=20),
)
header_lists = st.lists(st.tuples(header_names, st.binary(max_size=40)), max_size=3)


@st.composite
def good_json(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    document: dict[str, object] = {"target": "Fuzz/echo", "input": draw(json_values)}
    if draw(st.booleans()):
        document["idempotency_key"] = draw(st.text(min_size=1, max_size=10))
    return json.dumps(document).encode(), [_JSON_HEADER]


@st.composite
def odd_json(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    shape = draw(st.sampled_from(["nested", "big", "any", "fields"]))
    if shape == "nested":
        text = '{"target": "Fuzz/echo", "input": ' + draw(nesting) + "}"
    elif shape == "big":
        text = json.dumps({"target": "Fuzz/echo", "input": draw(big_text)})
    elif shape == "any":
        text = json.dumps(draw(json_values))
    else:
        text = json.dumps(
            draw(
                st.dictionaries(
                    st.sampled_from(["target", "id", "priority", "scope", "x"]),
                    json_values,
                    max_size=4,
                )
            )
        )
    headers = [_JSON_HEADER, *draw(header_lists)]
    return text.encode(errors="surrogatepass"), headers


@st.composite
def mutated_avro(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    request = InvocationRequest(
        f"avro-{draw(st.integers(0, 10**9))}",
        Target("Fuzz", "echo"),
        json.dumps(draw(json_values)).encode(),
        created_at_ms=1,
    )
    data = bytearray(_CODEC.encode_request(request))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data), draw(header_lists)


@st.composite
def random_bytes(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    headers = draw(header_lists)
    if draw(st.booleans()):
        headers.append(_JSON_HEADER)
    return draw(st.binary(max_size=200)), headers


records = st.tuples(
    st.integers(0, PARTITIONS - 1),
    keys,
    st.one_of(good_json(), good_json(), odd_json(), mutated_avro(), random_bytes()),
)


def _end_offsets(settings: Settings) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "x"})
    try:
        return {
            p: consumer.get_watermark_offsets(
                TopicPartition(settings.topic_names.invocations, p), timeout=10
            )[1]
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()


def _expectations(
    settings: Settings, start: dict[int, int], end: dict[int, int]
) -> tuple[set[tuple[int, int]], set[str]]:
    """What each record written between the offsets must end as, judged as a reader
    of the contract would: dead-letter coordinates, and ids that need one result."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"fuzz-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    topic = settings.topic_names.invocations
    assigned = [TopicPartition(topic, p, start[p]) for p in range(PARTITIONS)]
    consumer.assign(assigned)
    dead: set[tuple[int, int]] = set()
    results: set[str] = set()
    limits = settings.payload_limits

    def behind() -> bool:
        # By position, not by count: transaction markers of the scheduler's own
        # forwards take offsets that no message carries.
        return any(
            max(tp.offset, start[tp.partition]) < end[tp.partition]
            for tp in consumer.position(assigned)
        )

    try:
        while behind():
            for message in consumer.consume(500, 1):
                if message.error() is not None:
                    continue
                record = read_record(message)
                if record.offset >= end[record.partition]:
                    continue
                if any(name.startswith(ORIGIN_HEADER) for name, _ in record.headers):
                    continue  # forwarded by the scheduler: judged where it first arrived
                coordinates = (record.partition, record.offset)
                if record.unreadable is not None:
                    dead.add(coordinates)
                    continue
                try:
                    decoded = _CODEC.decode_invocations_record(
                        record.value or b"",
                        headers=record.headers,
                        topic=topic,
                        partition=record.partition,
                        offset=record.offset,
                        timestamp_ms=record.timestamp_ms,
                    )
                except DecodeError:
                    dead.add(coordinates)
                    continue
                if not isinstance(decoded, InvocationRequest):
                    continue  # a mutation that became a scheduler-to-scheduler message
                if request_too_large(decoded, limits, record.size) is not None:
                    dead.add(coordinates)
                    continue
                if decoded.target.service != "Fuzz" or decoded.target.handler != "echo":
                    dead.add(coordinates)
                results.add(decoded.id)
    finally:
        consumer.close()
    return dead, results


@settings(
    max_examples=25,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    deadline=None,
)
@given(batch=st.lists(records, min_size=10, max_size=40))
def test_no_record_stops_the_scheduler(
    runtime: Runtime, batch: list[tuple[int, bytes | None, tuple[bytes, list[tuple[bytes, bytes]]]]]
) -> None:
    settings = runtime.settings
    start = _end_offsets(settings)
    for partition, key, (value, headers) in batch:
        runtime.producer.produce(settings.topic_names.invocations, partition, key, value, headers)
    runtime.producer.flush()
    end = _end_offsets(settings)
    dead, expected = _expectations(settings, start, end)

    def coordinates() -> Counter[tuple[int, int]]:
        letters = runtime.outcomes.dead_letters()
        return Counter(d.coordinates for d in letters if "dlq.offset" in d.headers)

    def settled() -> bool:
        have = {r.invocation_id for r in runtime.outcomes.results()}
        return expected <= have and dead <= coordinates().keys()

    deadline = time.monotonic() + 60
    while not settled():
        assert runtime.scheduler.alive, "the scheduler process died"
        assert time.monotonic() < deadline, "records without an outcome after 60 s"
        time.sleep(0.2)
    counts = Counter(r.invocation_id for r in runtime.outcomes.results())
    assert all(counts[i] == 1 for i in expected), {i: counts[i] for i in expected if counts[i] != 1}
    letters = coordinates()
    assert all(letters[c] == 1 for c in dead), {c: letters[c] for c in dead if letters[c] != 1}
    assert runtime.scheduler.pid == runtime.pid and runtime.scheduler.alive
