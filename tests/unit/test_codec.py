"""The wire contract: schemas, single-object framing, core mappings and JSON ingress."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form
from hypothesis import given
from hypothesis import strategies as st

from pipeline.codec import MARKER, SchemaFiles, SchemaSet, WireCodec, default_schema_dir
from pipeline.core import ids
from pipeline.core.fair_share import ScopeLoad
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.model import (
    AttemptAlive,
    AttemptCompleted,
    AttemptFailed,
    AttemptFenced,
    AttemptSuspended,
    CallCompletion,
    Caller,
    DispatchOrder,
    EntryAppended,
    EntryKind,
    Failure,
    HandlerDefinition,
    InvocationRequest,
    InvocationResult,
    JournalEntry,
    JournalRecord,
    OnExhausted,
    QueueId,
    QueueSnapshot,
    ResultStatus,
    ResumeInvocation,
    RetryPolicy,
    ServiceDefinition,
    Target,
)
from pipeline.core.state import Invocation, VirtualQueue
from pipeline.core.verdict import Blocked, Blocker, LimitLevel
from pipeline.errors import DecodeError, ValidationError

SCHEMAS = default_schema_dir()
HISTORY_V1 = SCHEMAS / "history" / "InvocationRequest.v1.avsc"
JSON = [("content-type", b"application/json")]
WHERE: dict[str, Any] = {"topic": "inv", "partition": 2, "offset": 40, "timestamp_ms": 1_000}


@pytest.fixture(scope="module")
def codec() -> WireCodec:
    return WireCodec(SchemaSet())


def decode_request(codec: WireCodec, value: bytes, headers: Any = ()) -> InvocationRequest:
    return codec.decode_request(value, headers=list(headers), **WHERE)


def request(**changes: Any) -> InvocationRequest:
    fields: dict[str, Any] = {
        "id": "inv-1",
        "target": Target("Greeter", "greet"),
        "input": b'{"name":"ada"}',
        "created_at_ms": 1_700_000_000_000,
    }
    fields.update(changes)
    return InvocationRequest(**fields)


# strategies

INT = st.integers(-(2**31), 2**31 - 1)
LONG = st.integers(-(2**63), 2**63 - 1)
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
SCOPES = st.from_regex(r"[A-Za-z0-9_.-]{1,16}", fullmatch=True)
LIMIT_PARTS = st.from_regex(r"[A-Za-z0-9_.:@-]{1,16}", fullmatch=True)
LIMIT_KEYS = LIMIT_PARTS | st.tuples(LIMIT_PARTS, LIMIT_PARTS).map("/".join)
TARGETS = st.builds(
    Target,
    NAMES,
    NAMES,
    st.none() | st.text(min_size=1, max_size=10).filter(lambda k: "/" not in k),
)
FAILURES = st.builds(Failure, st.text(max_size=30), st.text(max_size=10), st.booleans())
ENTRIES = st.builds(
    JournalEntry,
    INT,
    st.sampled_from(EntryKind),
    st.text(max_size=10),
    st.none() | st.binary(max_size=20),
    st.none() | FAILURES,
)


@st.composite
def requests(draw: st.DrawFn) -> InvocationRequest:
    scope = draw(st.none() | SCOPES)
    return InvocationRequest(
        id=draw(st.text(min_size=1, max_size=20)),
        target=draw(TARGETS),
        input=draw(st.binary(max_size=50)),
        created_at_ms=draw(LONG),
        headers=tuple(draw(st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8))))),
        idempotency_key=draw(st.none() | st.text(min_size=1, max_size=10)),
        scope=scope,
        limit_key=None if scope is None else draw(st.none() | LIMIT_KEYS),
        priority=draw(st.integers(0, 9)),
    )


JOURNAL_RECORDS: st.SearchStrategy[JournalRecord] = st.one_of(
    st.builds(EntryAppended, st.text(max_size=10), INT, ENTRIES),
    st.builds(AttemptCompleted, st.text(max_size=10), INT, st.binary(max_size=20)),
    st.builds(AttemptFailed, st.text(max_size=10), INT, FAILURES, st.none() | LONG, st.booleans()),
    st.builds(AttemptFenced, st.text(max_size=10), INT, st.text(max_size=20)),
    st.builds(AttemptSuspended, st.text(max_size=10), INT, INT),
    st.builds(AttemptAlive, st.text(max_size=10), INT),
)


# schema files


def schema_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted([*SCHEMAS.glob("*.avsc"), *SCHEMAS.glob("history/*.avsc")]):
        yield path, json.loads(path.read_text())


def named_types(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum"):
            yield node
        for value in node.values():
            yield from named_types(value)
    elif isinstance(node, list):
        for value in node:
            yield from named_types(value)


def test_every_schema_file_is_a_pipeline_v1_record_named_like_its_file() -> None:
    for path, document in schema_documents():
        assert document["type"] == "record"
        assert document["namespace"] == "pipeline.v1"
        assert path.name.split(".")[0] == document["name"]


def test_every_named_type_and_field_has_a_doc() -> None:
    for path, document in schema_documents():
        for named in named_types(document):
            assert named.get("doc"), f"{path}: {named['name']} has no doc"
            for field in named.get("fields", []):
                assert field.get("doc"), f"{path}: {named['name']}.{field['name']} has no doc"


def test_schema_files_load_with_fastavro_load_schema() -> None:
    files = SchemaFiles.scan(SCHEMAS)
    assert "pipeline.v1.InvocationRequest" in files.paths
    for full_name in files.paths:
        schema = load_schema(full_name, repo=files)
        assert isinstance(schema, dict)
        assert schema["name"] == full_name
    # The history file inlines its named types, so it loads with the default repository.
    v1 = load_schema(str(HISTORY_V1))
    assert isinstance(v1, dict)
    assert v1["name"] == "pipeline.v1.InvocationRequest"


def test_schema_set_knows_every_record(codec: WireCodec) -> None:
    assert set(codec.schemas.names) >= {
        f"pipeline.v1.{name}"
        for name in (
            "Target",
            "Failure",
            "Header",
            "JournalEntry",
            "InvocationRequest",
            "ResumeInvocation",
            "JournalRecord",
            "DispatchOrder",
            "InvocationResult",
            "QueueSnapshot",
            "ServiceDefinition",
            "InvocationState",
            "VirtualQueueState",
        )
    }
    assert codec.schemas.schema("Target") is codec.schemas.schema("pipeline.v1.Target")


# framing


def rabin64(data: bytes) -> int:
    """CRC-64-AVRO as the Avro spec writes it, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_fastavro_fingerprint_hex_is_the_little_endian_java_long() -> None:
    # Vectors from Avro's share/test/data/schema-tests.txt (Java signed longs).
    for canonical, java_long in (
        ('"null"', 7195948357588979594),
        ('"boolean"', -6970731678124411036),
    ):
        raw = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        assert int.from_bytes(raw, "little", signed=True) == java_long


def test_encoded_bytes_start_with_marker_and_writer_fingerprint(codec: WireCodec) -> None:
    data = codec.encode_request(request())
    assert data[:2] == b"\xc3\x01" == MARKER
    canonical = to_parsing_canonical_form(codec.schemas.schema("InvocationRequest"))
    fastavro_fp = int.from_bytes(bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")), "little")
    assert int.from_bytes(data[2:10], "little") == fastavro_fp == rabin64(canonical.encode())
    assert data[2:10] == codec.schemas.fingerprint("InvocationRequest")


def test_every_record_has_its_own_fingerprint(codec: WireCodec) -> None:
    prints = [codec.schemas.fingerprint(name) for name in codec.schemas.names]
    assert len(set(prints)) == len(prints)


# round trips


# The module-scoped codec fixture is shared safely across hypothesis examples.


@given(req=requests())
def test_request_round_trip(codec: WireCodec, req: InvocationRequest) -> None:
    assert decode_request(codec, codec.encode_request(req)) == req


@given(record=JOURNAL_RECORDS)
def test_journal_round_trip(codec: WireCodec, record: JournalRecord) -> None:
    assert codec.decode_journal(codec.encode_journal(record)) == record


def entry(index: int, failed: bool = False) -> JournalEntry:
    if failed:
        return JournalEntry(index, EntryKind.RUN, f"step-{index}", failure=Failure("x", "E", True))
    return JournalEntry(index, EntryKind.RUN, f"step-{index}", value=b"v%d" % index)


def test_dispatch_round_trip(codec: WireCodec) -> None:
    order = DispatchOrder(
        request(scope="acme", limit_key="u1/a", priority=1, headers=(("h", b"1"),)),
        attempt=3,
        journal=(entry(0), entry(1, failed=True)),
    )
    assert codec.decode_dispatch(codec.encode_dispatch(order)) == order


@pytest.mark.parametrize("status", list(ResultStatus))
def test_result_round_trip(codec: WireCodec, status: ResultStatus) -> None:
    completed = status is ResultStatus.COMPLETED
    result = InvocationResult(
        invocation_id="inv-1",
        target=Target("Cart", "checkout", key="u1"),
        status=status,
        output=b"ok" if completed else None,
        failure=None if completed else Failure("boom", "ValueError", terminal=True),
        attempts=2,
        created_at_ms=1,
        completed_at_ms=9,
        first_started_at_ms=None if completed else 3,
        idempotency_key="k" if completed else None,
    )
    assert codec.decode_result(codec.encode_result(result)) == result


def test_queue_snapshot_round_trip(codec: WireCodec) -> None:
    for queue_id in (QueueId("acme", "u1/a"), QueueId.service_default("Greeter")):
        snapshot = QueueSnapshot(queue_id, queued=4, running=2, updated_at_ms=77)
        assert codec.decode_queue_snapshot(codec.encode_queue_snapshot(snapshot)) == snapshot


def test_service_round_trip(codec: WireCodec) -> None:
    service = ServiceDefinition(
        "Cart",
        (
            HandlerDefinition("add"),
            HandlerDefinition("checkout", RetryPolicy(3, 50, 1_000, 1.5, OnExhausted.PAUSE)),
        ),
        keyed=True,
    )
    assert codec.decode_service(codec.encode_service(service)) == service


@pytest.mark.parametrize("status", list(InvocationStatus))
def test_invocation_state_round_trip(codec: WireCodec, status: InvocationStatus) -> None:
    state = Invocation(
        request=request(idempotency_key="k"),
        status=status,
        attempt=2,
        journal=(entry(0),),
        wake_at_ms=500,
        fence_requested=True,
        queue_seq=12,
        first_started_at_ms=100,
        finished_at_ms=None,
        last_failure=Failure("lease expired"),
        output=None,
    )
    assert codec.decode_invocation_state(codec.encode_invocation_state(state)) == state
    fresh = Invocation(request(), InvocationStatus.PENDING)
    assert codec.decode_invocation_state(codec.encode_invocation_state(fresh)) == fresh


def test_queue_state_round_trip(codec: WireCodec) -> None:
    queue = VirtualQueue(QueueId("acme", "u1"), queued=3, running=1, next_seq=99)
    assert codec.decode_queue_state(codec.encode_queue_state(queue)) == queue
    rate = Blocked(Blocker.RATE, until_ms=5, rule_id="r", decided_at_ms=4)
    held = replace(queue, blocked=rate)
    back = codec.decode_queue_state(codec.encode_queue_state(held))
    assert back == held and back.blocked is not None and back.blocked.decided_at_ms == 4
    budget = Blocked(Blocker.CONCURRENCY, rule_id="s", level=LimitLevel.SCOPE, decided_at_ms=7)
    load = ScopeLoad("acme", running=2, blocked=budget)
    assert codec.decode_scope_load(codec.encode_scope_load(load)) == load


def test_queue_and_scope_state_written_before_verdicts_are_read(codec: WireCodec) -> None:
    # The history file names QueueId, as the scheduler's reader resolves from schemas/.
    old = json.loads((SCHEMAS / "history" / "VirtualQueueState.v4.avsc").read_text())
    old["fields"][0]["type"] = json.loads((SCHEMAS / "QueueId.avsc").read_text())
    out = io.BytesIO()
    out.write(MARKER)
    out.write(
        bytes.fromhex(fingerprint(to_parsing_canonical_form(parse_schema(old)), "CRC-64-AVRO"))
    )
    schemaless_writer(
        out,
        parse_schema(old),
        {"id": {"scope": "acme", "limit_key": "u1"}, "queued": 2, "awaiting_capacity": 1},
    )
    queue = out.getvalue()
    assert codec.decode_queue_state(queue) == VirtualQueue(
        QueueId("acme", "u1"), queued=2, awaiting_capacity=1
    )
    load = write_with("ScopeLoadState.v2.avsc", {"scope": "acme", "running": 3})
    assert codec.decode_scope_load(load) == ScopeLoad("acme", running=3)


def test_enum_symbols_are_avro_names_mapped_to_python_values(codec: WireCodec) -> None:
    symbols = codec.schemas.named_type("pipeline.v1.InvocationStatus")["symbols"]
    assert "backing_off" in symbols
    assert InvocationStatus.BACKING_OFF.value == "backing-off"


# schema evolution


def write_v1(record: dict[str, Any]) -> bytes:
    """A record as a producer still on InvocationRequest v1 writes it."""
    v1 = load_schema(str(HISTORY_V1))
    out = io.BytesIO()
    out.write(MARKER)
    out.write(bytes.fromhex(fingerprint(to_parsing_canonical_form(v1), "CRC-64-AVRO")))
    schemaless_writer(out, v1, record)
    return out.getvalue()


V1_RECORD: dict[str, Any] = {
    "id": "old-1",
    "target": {"service": "Greeter", "handler": "greet", "key": None},
    "input": b"{}",
    "created_at_ms": 5,
    "headers": [{"key": "traceparent", "value": b"00-1"}],
}


def test_v1_request_is_read_with_new_fields_defaulted(codec: WireCodec) -> None:
    data = write_v1(V1_RECORD)
    assert data[2:10] in codec.schemas.writer_fingerprints("InvocationRequest")[1:]
    assert decode_request(codec, data) == InvocationRequest(
        id="old-1",
        target=Target("Greeter", "greet"),
        input=b"{}",
        created_at_ms=5,
        headers=(("traceparent", b"00-1"),),
        idempotency_key=None,
        scope=None,
        limit_key=None,
        priority=5,
    )


def test_v1_request_without_id_gets_the_record_id(codec: WireCodec) -> None:
    assert decode_request(codec, write_v1({**V1_RECORD, "id": ""})).id == "rec:inv:2:40"


def write_with(history_file: str, record: dict[str, Any]) -> bytes:
    """A record as a writer on an older schema (a file of schemas/history) wrote it."""
    schema = load_schema(str(SCHEMAS / "history" / history_file))
    out = io.BytesIO()
    out.write(MARKER)
    out.write(bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")))
    schemaless_writer(out, schema, record)
    return out.getvalue()


OLD_REQUEST = {**V1_RECORD, "idempotency_key": None, "scope": "acme", "limit_key": None}
OLD_ENTRY = {"index": 0, "kind": "send", "name": "Mail/notify", "value": b"r", "failure": None}


def test_state_written_before_deployment_limits_and_calls_is_read(codec: WireCodec) -> None:
    state = write_with(
        "InvocationState.v2.avsc",
        {"request": {**OLD_REQUEST, "priority": 1}, "status": "running", "journal": [OLD_ENTRY]},
    )
    invocation = codec.decode_invocation_state(state)
    assert invocation.status is InvocationStatus.RUNNING and invocation.request.priority == 1
    assert invocation.journal[0].kind is EntryKind.SEND
    assert (invocation.deployment, invocation.awaiting_call, invocation.holds_slot) == (
        None,
        None,
        False,
    )
    assert invocation.request.caller is None


def test_journal_written_before_heartbeats_is_read(codec: WireCodec) -> None:
    record = write_with(
        "JournalRecord.v4.avsc",
        {
            "invocation_id": "a",
            "attempt": 2,
            "body": ("pipeline.v1.AttemptSuspended", {"awaiting_index": 3}),
        },
    )
    assert codec.decode_journal(record) == AttemptSuspended("a", 2, 3)


def test_journal_and_dispatch_written_before_calls_are_read(codec: WireCodec) -> None:
    record = write_with(
        "JournalRecord.v3.avsc",
        {
            "invocation_id": "a",
            "attempt": 2,
            "body": ("pipeline.v1.AttemptFenced", {"reason": "x"}),
        },
    )
    assert codec.decode_journal(record) == AttemptFenced("a", 2, "x")
    order = write_with(
        "DispatchOrder.v2.avsc",
        {"request": {**OLD_REQUEST, "priority": 5}, "attempt": 1, "journal": [OLD_ENTRY]},
    )
    decoded = codec.decode_dispatch(order)
    assert decoded.request.scope == "acme" and decoded.journal[0].value == b"r"


# the invocations topic: requests and resume commands side by side


def decode_invocations(codec: WireCodec, value: bytes, headers: Any = ()) -> Any:
    return codec.decode_invocations_record(value, headers=list(headers), **WHERE)


@given(
    command=st.builds(ResumeInvocation, st.text(min_size=1, max_size=30), LONG),
)
def test_resume_round_trip(codec: WireCodec, command: ResumeInvocation) -> None:
    data = codec.encode_resume(command)
    assert data[:2] == MARKER
    assert data[2:10] == codec.schemas.fingerprint("ResumeInvocation")
    assert decode_invocations(codec, data) == command


def test_invocations_records_are_told_apart_by_fingerprint(codec: WireCodec) -> None:
    req = request(headers=(("tenant", b"acme"),))
    command = ResumeInvocation("inv-1", 1_700_000_000_000)

    assert decode_invocations(codec, codec.encode_request(req)) == req
    assert decode_invocations(codec, codec.encode_resume(command)) == command
    # A request written with an older schema is still a request.
    assert decode_invocations(codec, write_v1(V1_RECORD)) == decode_request(
        codec, write_v1(V1_RECORD)
    )


def test_invocations_records_read_requests_exactly_like_decode_request(
    codec: WireCodec,
) -> None:
    # Without id, so that the id is derived from where the record sits.
    avro = codec.schemas.encode("InvocationRequest", {**V1_RECORD, "id": ""})
    headers = [("traceparent", b"new"), ("x", None)]
    assert decode_invocations(codec, avro, headers) == decode_request(codec, avro, headers)
    body = b'{"target": "Greeter/greet", "idempotency_key": "k"}'
    assert decode_invocations(codec, body, JSON) == decode_request(codec, body, JSON)


def test_json_content_type_wins_over_a_resume_fingerprint(codec: WireCodec) -> None:
    # JSON ingress carries only requests: a resume's bytes under a JSON content-type are
    # bad JSON, as decode_request would say, not a resume.
    data = codec.encode_resume(ResumeInvocation("inv-1", 0))
    with pytest.raises(DecodeError, match=r"not UTF-8|invalid JSON"):
        decode_invocations(codec, data, JSON)


def test_invocations_record_errors_match_decode_request(codec: WireCodec) -> None:
    journal = codec.encode_journal(AttemptFenced("inv-1", 1, "lease expired"))
    for bad in (b"", b'{"target": "A/b"}', MARKER + bytes(range(1, 9)), journal):
        with pytest.raises(DecodeError) as via_request:
            decode_request(codec, bad)
        with pytest.raises(DecodeError) as via_invocations:
            decode_invocations(codec, bad)
        assert str(via_invocations.value) == str(via_request.value)


def test_truncated_or_invalid_resume_is_a_decode_error(codec: WireCodec) -> None:
    data = codec.encode_resume(ResumeInvocation("inv-1", 5))
    with pytest.raises(DecodeError, match=r"ResumeInvocation: truncated body"):
        decode_invocations(codec, data[:-1])
    empty_id = codec.schemas.encode("ResumeInvocation", {"invocation_id": "", "requested_at_ms": 5})
    with pytest.raises(DecodeError, match=r"ResumeInvocation: record is not valid: .*empty"):
        decode_invocations(codec, empty_id)


def test_decode_request_refuses_a_resume(codec: WireCodec) -> None:
    data = codec.encode_resume(ResumeInvocation("inv-1", 5))
    with pytest.raises(DecodeError, match=r"expected a pipeline\.v1\.InvocationRequest record"):
        decode_request(codec, data)


# decode errors


def test_decode_without_marker_names_the_first_bytes(codec: WireCodec) -> None:
    with pytest.raises(DecodeError, match=r"expected marker c3 01, got 00 00 00 00 01 ff"):
        codec.decode_journal(b"\x00\x00\x00\x00\x01\xff")
    with pytest.raises(DecodeError, match=r"got 7b 22 74 61 72 67 65 74\.\.\. \(looks like JSON"):
        decode_request(codec, b'{"target": "A/b"}')
    with pytest.raises(DecodeError, match=r"got no bytes \(empty value\)"):
        codec.decode_result(b"")


def test_decode_short_header(codec: WireCodec) -> None:
    with pytest.raises(DecodeError, match=r"truncated header: 6 bytes, .* need 10"):
        codec.decode_journal(MARKER + b"\x01\x02\x03\x04")


def test_decode_unknown_fingerprint_prints_it_in_hex(codec: WireCodec) -> None:
    with pytest.raises(DecodeError, match=r"unknown writer schema fingerprint 0102030405060708"):
        codec.decode_dispatch(MARKER + bytes(range(1, 9)) + b"\x00")


def test_decode_record_of_another_type(codec: WireCodec) -> None:
    data = codec.encode_journal(AttemptFenced("inv-1", 1, "lease expired"))
    with pytest.raises(
        DecodeError,
        match=r"expected a pipeline\.v1\.DispatchOrder record, got one written with the "
        r"schema of pipeline\.v1\.JournalRecord",
    ):
        codec.decode_dispatch(data)


def test_decode_truncated_body(codec: WireCodec) -> None:
    data = codec.encode_request(request())
    for cut in (11, 20, len(data) - 1):
        with pytest.raises(DecodeError, match=r"InvocationRequest: truncated body") as info:
            decode_request(codec, data[:cut])
        assert isinstance(info.value.__cause__, EOFError)


def test_decode_trailing_bytes(codec: WireCodec) -> None:
    data = codec.encode_request(request())
    with pytest.raises(DecodeError, match=r"invalid body: 2 bytes left over after the record"):
        decode_request(codec, data + b"\x00\x00")


def test_decode_invalid_union_branch(codec: WireCodec) -> None:
    data = codec.encode_journal(AttemptFenced("i", 1, "r"))
    # Body: string "i" (02 69), int 1 (02), union branch 3 (06); 7 is no branch.
    corrupt = data[:13] + b"\x0e" + data[14:]
    with pytest.raises(DecodeError, match=r"JournalRecord: invalid body at byte \d+: \w+"):
        codec.decode_journal(corrupt)


def test_decode_invalid_utf8(codec: WireCodec) -> None:
    data = codec.encode_journal(AttemptFenced("i", 1, "r"))
    corrupt = data[:11] + b"\xff" + data[12:]
    with pytest.raises(DecodeError, match=r"invalid body .*UnicodeDecodeError"):
        codec.decode_journal(corrupt)


def test_decode_value_the_dataclass_rejects(codec: WireCodec) -> None:
    raw = {
        "id": "x",
        "target": {"service": "Greeter", "handler": "greet", "key": None},
        "input": b"",
        "created_at_ms": 0,
        "priority": 12,
    }
    data = codec.schemas.encode("InvocationRequest", raw)
    with pytest.raises(DecodeError, match=r"record is not valid: priority 12 is not valid") as info:
        decode_request(codec, data)
    assert type(info.value.__cause__) is ValidationError
    bad_target = {**raw, "priority": 1, "target": {"service": "9bad", "handler": "h", "key": None}}
    with pytest.raises(DecodeError, match=r"service name '9bad' is not valid"):
        decode_request(codec, codec.schemas.encode("InvocationRequest", bad_target))


def test_decode_embedded_request_without_id(codec: WireCodec) -> None:
    raw_request = {
        "id": "",
        "target": {"service": "A", "handler": "b", "key": None},
        "input": b"",
        "created_at_ms": 0,
    }
    data = codec.schemas.encode("DispatchOrder", {"request": raw_request, "attempt": 1})
    with pytest.raises(
        DecodeError, match=r"DispatchOrder: record is not valid: .*must not be empty"
    ):
        codec.decode_dispatch(data)


def test_encode_of_a_bad_record_names_it(codec: WireCodec) -> None:
    with pytest.raises(ValidationError, match=r"cannot encode pipeline\.v1\.QueueId"):
        codec.schemas.encode("QueueId", {"scope": 1})
    with pytest.raises(ValidationError, match=r"unknown record 'Nope'"):
        codec.schemas.encode("Nope", {})


def test_enum_drift_fails_at_construction(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    path = schemas / "InvocationState.avsc"
    path.write_text(path.read_text().replace('"backing_off", ', ""))
    with pytest.raises(ValidationError, match=r"InvocationStatus has symbols"):
        WireCodec(SchemaSet(schemas))


def test_history_of_an_unknown_record_fails_at_load(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    gone = {"type": "record", "name": "Gone", "namespace": "pipeline.v1", "fields": []}
    (schemas / "history" / "Gone.v1.avsc").write_text(json.dumps(gone))
    with pytest.raises(ValidationError, match=r"'pipeline\.v1\.Gone', which has no current"):
        SchemaSet(schemas)


def test_unresolved_reference_names_the_file(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    (schemas / "Failure.avsc").unlink()
    with pytest.raises(
        ValidationError, match=r"\.avsc does not load: UnknownType: pipeline\.v1\.Failure"
    ):
        SchemaSet(schemas)


def test_missing_schema_directory(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"does not exist"):
        SchemaSet(tmp_path / "nothing")


# Kafka headers


def test_record_headers_join_and_win_over_avro_headers(codec: WireCodec) -> None:
    req = request(headers=(("traceparent", b"old"), ("tenant", b"acme")))
    decoded = decode_request(
        codec,
        codec.encode_request(req),
        [("content-type", b"avro/binary"), ("traceparent", b"new"), ("x", None)],
    )
    assert decoded.headers == (("tenant", b"acme"), ("traceparent", b"new"), ("x", b""))


# JSON ingress


def test_json_minimal(codec: WireCodec) -> None:
    req = decode_request(codec, b'{"target": "Greeter/greet"}', JSON)
    assert req == InvocationRequest(
        id="rec:inv:2:40", target=Target("Greeter", "greet"), input=b"null", created_at_ms=1_000
    )


def test_json_all_fields(codec: WireCodec) -> None:
    body = {
        "target": "Cart/u-1/checkout",
        "input": {"items": [1, 2.5, "x", None, True], "é": "ü"},
        "id": "given",
        "idempotency_key": "k",
        "scope": "acme",
        "limit_key": "u1/agent",
        "priority": 0,
    }
    headers = [("traceparent", b"00-1"), ("Content-Type", b"application/json; charset=utf-8")]
    req = decode_request(codec, json.dumps(body, indent=2).encode(), headers)
    assert req == InvocationRequest(
        id="given",
        target=Target("Cart", "checkout", key="u-1"),
        input=b'{"items":[1,2.5,"x",null,true],"\\u00e9":"\\u00fc"}',
        created_at_ms=1_000,
        headers=(("traceparent", b"00-1"),),
        idempotency_key="k",
        scope="acme",
        limit_key="u1/agent",
        priority=0,
    )


@pytest.mark.parametrize("value", ['"text"', "[1, 2]", "3", "null"])
def test_json_input_is_stored_compact(codec: WireCodec, value: str) -> None:
    req = decode_request(codec, f'{{"target": "A/b", "input": {value}}}'.encode(), JSON)
    assert req.input == value.replace(" ", "").encode()


def test_json_id_fallbacks(codec: WireCodec) -> None:
    def id_of(body: str) -> str:
        return decode_request(codec, body.encode(), JSON).id

    assert id_of('{"target": "A/b", "id": "mine", "idempotency_key": "k"}') == "mine"
    assert id_of('{"target": "A/b", "idempotency_key": "k"}') == "idem:A/b:k"
    assert id_of('{"target": "A/b", "idempotency_key": "k"}') == ids.idempotent_id(
        Target("A", "b"), "k"
    )
    assert id_of('{"target": "A/b"}') == ids.record_id("inv", 2, 40)
    assert id_of('{"target": "A/b", "id": ""}') == "rec:inv:2:40"


def test_avro_id_fallbacks(codec: WireCodec) -> None:
    raw = {
        "id": "",
        "target": {"service": "A", "handler": "b", "key": "k1"},
        "input": b"",
        "created_at_ms": 0,
    }
    plain = codec.schemas.encode("InvocationRequest", raw)
    assert decode_request(codec, plain).id == "rec:inv:2:40"
    keyed = codec.schemas.encode("InvocationRequest", {**raw, "idempotency_key": "ik"})
    assert decode_request(codec, keyed).id == "idem:A/k1/b:ik"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"target": "A/b", "inputs": 1, "prio": 2}',
            r"unknown field\(s\) inputs, prio; allowed "
            r"fields are target, input, id, idempotency_key, scope, limit_key, priority",
        ),
        (b'{"input": 1}', r"field 'target' is required"),
        (b'{"target": 5}', r"field 'target' must be a string, got a number"),
        (b'{"target": "A"}', r"field 'target': target 'A' is not valid"),
        (b'{"target": "A/b", "id": 7}', r"field 'id' must be a string or null, got a number"),
        (
            b'{"target": "A/b", "scope": []}',
            r"field 'scope' must be a string or null, got an array",
        ),
        (b'{"target": "A/b", "limit_key": {}}', r"field 'limit_key' must be .* got an object"),
        (b'{"target": "A/b", "idempotency_key": false}', r"'idempotency_key' .* got a boolean"),
        (b'{"target": "A/b", "idempotency_key": ""}', r"'idempotency_key' must not be empty"),
        (
            b'{"target": "A/b", "priority": "1"}',
            r"'priority' must be an integer from 0 to 9, got a string",
        ),
        (
            b'{"target": "A/b", "priority": 10}',
            r"'priority' must be an integer from 0 to 9, got 10",
        ),
        (b'{"target": "A/b", "priority": true}', r"'priority' .* got a boolean"),
        (b'{"target": "A/b", "priority": 1.0}', r"'priority' .* got a number"),
        (b'{"target": "A/b", "limit_key": "u1"}', r"limit key 'u1' needs a scope"),
        (b'{"target": "A/b", "scope": "no spaces"}', r"scope 'no spaces' is not valid"),
        (
            b'{"target": "A/b",\n "input": [1,]}',
            r"invalid JSON at line 2 column 14 \(char 31\): "
            r"Expecting value",
        ),
        (b"", r"invalid JSON at line 1 column 1 \(char 0\)"),
        (b'{"target": "A/b", "input": NaN}', r"NaN is not a JSON value"),
        (b'["A/b"]', r"must be an object, got an array"),
        (b'{"target": "A/b", "input": "\xff"}', r"not UTF-8: byte 28: invalid start byte"),
    ],
)
def test_json_errors(codec: WireCodec, body: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_request(codec, body, JSON)


def test_fingerprint_matches_the_avro_specification_vector() -> None:
    # Avro's own test vector: CRC-64-AVRO of the schema "int" is 8247732601305521295;
    # single-object encoding writes it little-endian, as Java does.
    from fastavro.schema import parse_schema

    from pipeline.codec.avro import schema_fingerprint

    assert schema_fingerprint(parse_schema("int")) == (8247732601305521295).to_bytes(8, "little")


def test_calls_round_trip_through_every_record_that_carries_them(codec: WireCodec) -> None:
    caller = Caller("parent", "acme", 4)
    request = InvocationRequest("child", Target("Pricing", "quote"), b"{}", 1, caller=caller)
    assert decode_invocations(codec, codec.encode_request(request)).caller == caller
    completion = CallCompletion("parent", 4, output=None, failure=Failure("no", "E", True))
    assert decode_invocations(codec, codec.encode_call_completion(completion)) == completion
    suspended = AttemptSuspended("parent", 2, 4)
    assert codec.decode_journal(codec.encode_journal(suspended)) == suspended
    state = Invocation(
        request, InvocationStatus.SUSPENDED, attempt=2, awaiting_call=4, holds_slot=True
    )
    assert codec.decode_invocation_state(codec.encode_invocation_state(state)) == state
