"""The one place where core types meet their Avro records.

Each mapping is written out by hand, field by field: no reflection on the hot path, and
a renamed field fails a round-trip test instead of silently dropping data. Decoding
turns every failure (bad bytes, a value a dataclass rejects) into `DecodeError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, Generic, TypeVar, assert_never

from pipeline.codec import json_ingress
from pipeline.codec.avro import HEADER_SIZE, MARKER, SchemaSet
from pipeline.codec.state_keys import InvocationFacets
from pipeline.core.deployment import DeploymentLimit, DeploymentLoad
from pipeline.core.fair_share import ScopeLoad
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.limits import LimitRule, RulePattern, RuleSet
from pipeline.core.model import (
    AttemptAlive,
    AttemptCompleted,
    AttemptFailed,
    AttemptFenced,
    AttemptSuspended,
    CallCompletion,
    Caller,
    CapacityKind,
    CapacityMessage,
    DispatchOrder,
    EntryAppended,
    EntryKind,
    Failure,
    HandlerDefinition,
    Headers,
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

REQUEST = "pipeline.v1.InvocationRequest"
RESUME = "pipeline.v1.ResumeInvocation"
JOURNAL = "pipeline.v1.JournalRecord"
DISPATCH = "pipeline.v1.DispatchOrder"
RESULT = "pipeline.v1.InvocationResult"
QUEUE_SNAPSHOT = "pipeline.v1.QueueSnapshot"
SERVICE = "pipeline.v1.ServiceDefinition"
LIMIT_RULES = "pipeline.v1.LimitRuleSet"
INVOCATION_STATE = "pipeline.v1.InvocationState"
QUEUE_STATE = "pipeline.v1.VirtualQueueState"
SCOPE_LOAD = "pipeline.v1.ScopeLoadState"
CAPACITY = "pipeline.v1.CapacityMessage"
CALL_COMPLETION = "pipeline.v1.CallCompletion"
DEPLOYMENT_LOAD = "pipeline.v1.DeploymentLoadState"

_ENTRY_APPENDED = "pipeline.v1.EntryAppended"
_ATTEMPT_COMPLETED = "pipeline.v1.AttemptCompleted"
_ATTEMPT_FAILED = "pipeline.v1.AttemptFailed"
_ATTEMPT_FENCED = "pipeline.v1.AttemptFenced"
_ATTEMPT_SUSPENDED = "pipeline.v1.AttemptSuspended"
_ATTEMPT_ALIVE = "pipeline.v1.AttemptAlive"

CONTENT_TYPE = "content-type"

Avro = dict[str, Any]
_E = TypeVar("_E", bound=Enum)
_T = TypeVar("_T")


class _Symbols(Generic[_E]):
    """Python enum values <-> Avro enum symbols, which cannot contain '-'."""

    def __init__(self, avro_name: str, enum: type[_E]) -> None:
        self.avro_name = avro_name
        self.enum = enum
        self.to_avro: dict[_E, str] = {m: str(m.value).replace("-", "_") for m in enum}
        self.from_avro: dict[str, _E] = {s: m for m, s in self.to_avro.items()}


_ENTRY_KIND = _Symbols("pipeline.v1.EntryKind", EntryKind)
_RESULT_STATUS = _Symbols("pipeline.v1.ResultStatus", ResultStatus)
_ON_EXHAUSTED = _Symbols("pipeline.v1.OnExhausted", OnExhausted)
_STATUS = _Symbols("pipeline.v1.InvocationStatus", InvocationStatus)
_CAPACITY_KIND = _Symbols("pipeline.v1.CapacityKind", CapacityKind)
_ENUMS: tuple[_Symbols[Any], ...] = (
    _ENTRY_KIND,
    _RESULT_STATUS,
    _ON_EXHAUSTED,
    _STATUS,
    _CAPACITY_KIND,
)


class WireCodec:
    """Bytes on the topics <-> core types, for every record of the wire contract."""

    def __init__(self, schemas: SchemaSet | None = None) -> None:
        self.schemas = schemas if schemas is not None else SchemaSet()
        _check_enums(self.schemas)
        # Bound once: these run per record.
        self._encode = self.schemas.encode
        self._decode_avro = self.schemas.decode
        # Older writer schemas of a resume command count too: a record written by an
        # earlier version must not be mistaken for a request.
        self._resume_fingerprints = frozenset(self.schemas.writer_fingerprints(RESUME))
        self._capacity_fingerprints = frozenset(self.schemas.writer_fingerprints(CAPACITY))
        self._completion_fingerprints = frozenset(self.schemas.writer_fingerprints(CALL_COMPLETION))

    def _decode(self, name: str, data: bytes, build: Callable[[Avro], _T]) -> _T:
        record = self._decode_avro(name, data)
        try:
            return build(record)
        except DecodeError:
            raise
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"{name}: record is not valid: {exc}") from exc

    # invocations

    def encode_request(self, request: InvocationRequest) -> bytes:
        return self._encode(REQUEST, _request_to_avro(request))

    def decode_request(
        self,
        value: bytes,
        *,
        headers: Sequence[tuple[str, bytes]],
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
    ) -> InvocationRequest:
        """A request from a record of `invocations`: Avro, or JSON by its content-type.

        The record's Kafka headers (but content-type) join the request's headers and
        replace Avro headers of the same name. A request without id gets one derived
        from its idempotency key, else from where the record sits in the topic.
        """
        record_headers: list[tuple[str, bytes]] = []
        is_json = False
        for key, header_value in headers:
            # confluent-kafka gives None for a header without value: keep it as b"".
            header_value = header_value or b""
            if key.lower() == CONTENT_TYPE:
                is_json = _is_json(header_value)
            else:
                record_headers.append((key, header_value))
        if is_json:
            return json_ingress.parse_request(
                value,
                headers=tuple(record_headers),
                topic=topic,
                partition=partition,
                offset=offset,
                timestamp_ms=timestamp_ms,
            )
        record = self._decode_avro(REQUEST, value)
        try:
            target = _target_from_avro(record["target"])
            request_id = record["id"] or json_ingress.derive_id(
                target,
                record["idempotency_key"],
                topic=topic,
                partition=partition,
                offset=offset,
            )
            return _request_from_avro(
                record, request_id, target, _merge_headers(record["headers"], record_headers)
            )
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"{REQUEST}: record is not valid: {exc}") from exc

    def encode_resume(self, command: ResumeInvocation) -> bytes:
        return self._encode(
            RESUME,
            {"invocation_id": command.invocation_id, "requested_at_ms": command.requested_at_ms},
        )

    def encode_call_completion(self, completion: CallCompletion) -> bytes:
        return self._encode(
            CALL_COMPLETION,
            {
                "invocation_id": completion.invocation_id,
                "entry_index": completion.entry_index,
                "output": completion.output,
                "failure": _failure_to_avro(completion.failure),
            },
        )

    def encode_capacity(self, message: CapacityMessage) -> bytes:
        return self._encode(
            CAPACITY,
            {
                "kind": _CAPACITY_KIND.to_avro[message.kind],
                "deployment": message.deployment,
                "partition": message.partition,
                "count": message.count,
            },
        )

    def decode_invocations_record(
        self,
        value: bytes,
        *,
        headers: Sequence[tuple[str, bytes]],
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
    ) -> InvocationRequest | ResumeInvocation | CapacityMessage | CallCompletion:
        """Any record of `invocations`: a resume command, a capacity message or a call
        completion, told apart by its writer fingerprint, else a request exactly as
        `decode_request` reads it.

        A JSON content-type wins, as in `decode_request`: JSON ingress only carries
        requests. Requests, the hot path, pay one slice and one set lookup.
        """
        if (
            value[2:HEADER_SIZE] in self._resume_fingerprints
            and value[:2] == MARKER
            and not _declares_json(headers)
        ):
            return self._decode(RESUME, value, _resume_from_avro)
        if (
            value[2:HEADER_SIZE] in self._capacity_fingerprints
            and value[:2] == MARKER
            and not _declares_json(headers)
        ):
            return self._decode(CAPACITY, value, _capacity_from_avro)
        if (
            value[2:HEADER_SIZE] in self._completion_fingerprints
            and value[:2] == MARKER
            and not _declares_json(headers)
        ):
            return self._decode(CALL_COMPLETION, value, _completion_from_avro)
        return self.decode_request(
            value,
            headers=headers,
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp_ms=timestamp_ms,
        )

    # journal

    def encode_journal(self, record: JournalRecord) -> bytes:
        return self._encode(JOURNAL, _journal_to_avro(record))

    def decode_journal(self, value: bytes) -> JournalRecord:
        return self._decode(JOURNAL, value, _journal_from_avro)

    # dispatch

    def encode_dispatch(self, order: DispatchOrder) -> bytes:
        return self._encode(
            DISPATCH,
            {
                "request": _request_to_avro(order.request),
                "attempt": order.attempt,
                "journal": [_entry_to_avro(e) for e in order.journal],
            },
        )

    def decode_dispatch(self, value: bytes) -> DispatchOrder:
        return self._decode(DISPATCH, value, _dispatch_from_avro)

    # results

    def encode_result(self, result: InvocationResult) -> bytes:
        return self._encode(
            RESULT,
            {
                "invocation_id": result.invocation_id,
                "target": _target_to_avro(result.target),
                "status": _RESULT_STATUS.to_avro[result.status],
                "output": result.output,
                "failure": _failure_to_avro(result.failure),
                "attempts": result.attempts,
                "created_at_ms": result.created_at_ms,
                "completed_at_ms": result.completed_at_ms,
                "first_started_at_ms": result.first_started_at_ms,
                "idempotency_key": result.idempotency_key,
            },
        )

    def decode_result(self, value: bytes) -> InvocationResult:
        return self._decode(RESULT, value, _result_from_avro)

    # queue-state

    def encode_queue_snapshot(self, snapshot: QueueSnapshot) -> bytes:
        return self._encode(
            QUEUE_SNAPSHOT,
            {
                "queue_id": _queue_id_to_avro(snapshot.queue_id),
                "queued": snapshot.queued,
                "running": snapshot.running,
                "updated_at_ms": snapshot.updated_at_ms,
            },
        )

    def decode_queue_snapshot(self, value: bytes) -> QueueSnapshot:
        return self._decode(QUEUE_SNAPSHOT, value, _snapshot_from_avro)

    # services control topic

    def encode_service(self, service: ServiceDefinition) -> bytes:
        return self._encode(
            SERVICE,
            {
                "name": service.name,
                "handlers": [
                    {"name": h.name, "retry": _retry_to_avro(h.retry)} for h in service.handlers
                ],
                "keyed": service.keyed,
            },
        )

    def decode_service(self, value: bytes) -> ServiceDefinition:
        return self._decode(SERVICE, value, _service_from_avro)

    # limits control topic

    def encode_ruleset(self, ruleset: RuleSet) -> bytes:
        return self._encode(
            LIMIT_RULES,
            {
                "version": ruleset.version,
                "rules": [_rule_to_avro(r) for r in ruleset.rules],
                "deployments": [
                    {"deployment": d.deployment, "concurrency": d.concurrency}
                    for d in ruleset.deployments
                ],
            },
        )

    def decode_ruleset(self, value: bytes) -> RuleSet:
        return self._decode(LIMIT_RULES, value, _ruleset_from_avro)

    # scheduler changelogs

    def encode_invocation_state(self, invocation: Invocation) -> bytes:
        return self._encode(
            INVOCATION_STATE,
            {
                "request": _request_to_avro(invocation.request),
                "status": _STATUS.to_avro[invocation.status],
                "attempt": invocation.attempt,
                "journal": [_entry_to_avro(e) for e in invocation.journal],
                "wake_at_ms": invocation.wake_at_ms,
                "fence_requested": invocation.fence_requested,
                "queue_seq": invocation.queue_seq,
                "first_started_at_ms": invocation.first_started_at_ms,
                "finished_at_ms": invocation.finished_at_ms,
                "last_failure": _failure_to_avro(invocation.last_failure),
                "output": invocation.output,
                "deployment": invocation.deployment,
                "awaiting_since_ms": invocation.awaiting_since_ms,
                "awaiting_call": invocation.awaiting_call,
                "holds_slot": invocation.holds_slot,
            },
        )

    def decode_invocation_state(self, value: bytes) -> Invocation:
        return self._decode(INVOCATION_STATE, value, _invocation_from_avro)

    def decode_invocation_facets(self, value: bytes) -> InvocationFacets:
        """What indexes need of an invocation state, without building the rest."""
        return self._decode(INVOCATION_STATE, value, _facets_from_avro)

    def encode_queue_state(self, queue: VirtualQueue) -> bytes:
        return self._encode(
            QUEUE_STATE,
            {
                "id": _queue_id_to_avro(queue.id),
                "queued": queue.queued,
                "running": queue.running,
                "next_seq": queue.next_seq,
                "rate_tat_ms": queue.rate_tat_ms,
                "paused_until_ms": queue.paused_until_ms,
                "vfinish": queue.vfinish,
                "awaiting_capacity": queue.awaiting_capacity,
                "blocked": _verdict_to_avro(queue.blocked),
            },
        )

    def decode_queue_state(self, value: bytes) -> VirtualQueue:
        return self._decode(QUEUE_STATE, value, _queue_state_from_avro)

    def encode_scope_load(self, load: ScopeLoad) -> bytes:
        return self._encode(
            SCOPE_LOAD,
            {
                "scope": load.scope,
                "running": load.running,
                "queued": load.queued,
                "rate_tat_ms": load.rate_tat_ms,
                "vclock": load.vclock,
                "vmax": load.vmax,
                "blocked": _verdict_to_avro(load.blocked),
            },
        )

    def decode_scope_load(self, value: bytes) -> ScopeLoad:
        return self._decode(SCOPE_LOAD, value, _scope_load_from_avro)

    def encode_deployment_load(self, load: DeploymentLoad) -> bytes:
        return self._encode(
            DEPLOYMENT_LOAD,
            {
                "deployment": load.deployment,
                "running": load.running,
                "demand": [{"partition": p, "count": n} for p, n in load.demand],
                "turn": load.turn,
            },
        )

    def decode_deployment_load(self, value: bytes) -> DeploymentLoad:
        return self._decode(DEPLOYMENT_LOAD, value, _deployment_load_from_avro)


def _check_enums(schemas: SchemaSet) -> None:
    """Fail at start-up, not on the first record, when schemas and enums drift apart."""
    for symbols in _ENUMS:
        in_schema = schemas.named_type(symbols.avro_name).get("symbols", [])
        if set(in_schema) != set(symbols.from_avro):
            raise ValidationError(
                f"Avro enum {symbols.avro_name} has symbols {sorted(in_schema)} but "
                f"{symbols.enum.__name__} maps to {sorted(symbols.from_avro)}"
            )


def _declares_json(headers: Sequence[tuple[str, bytes]]) -> bool:
    """Whether `decode_request` would read the record as JSON: its last content-type says so."""
    is_json = False
    for key, value in headers:
        if key.lower() == CONTENT_TYPE:
            is_json = _is_json(value or b"")
    return is_json


def _is_json(content_type: bytes) -> bool:
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json"


def _merge_headers(avro_headers: list[Avro], record_headers: list[tuple[str, bytes]]) -> Headers:
    if not record_headers:
        return tuple((h["key"], h["value"]) for h in avro_headers)
    replaced = {key for key, _ in record_headers}
    kept = tuple((h["key"], h["value"]) for h in avro_headers if h["key"] not in replaced)
    return kept + tuple(record_headers)


# core -> Avro


def _target_to_avro(target: Target) -> Avro:
    return {"service": target.service, "handler": target.handler, "key": target.key}


def _failure_to_avro(failure: Failure | None) -> Avro | None:
    if failure is None:
        return None
    return {
        "message": failure.message,
        "error_type": failure.error_type,
        "terminal": failure.terminal,
        "code": failure.code,
    }


def _queue_id_to_avro(queue_id: QueueId) -> Avro:
    return {"scope": queue_id.scope, "limit_key": queue_id.limit_key}


def _request_to_avro(request: InvocationRequest) -> Avro:
    return {
        "id": request.id,
        "target": _target_to_avro(request.target),
        "input": request.input,
        "created_at_ms": request.created_at_ms,
        "headers": [{"key": key, "value": value} for key, value in request.headers],
        "idempotency_key": request.idempotency_key,
        "scope": request.scope,
        "limit_key": request.limit_key,
        "priority": request.priority,
        "caller": None if request.caller is None else _caller_to_avro(request.caller),
    }


def _caller_to_avro(caller: Caller) -> Avro:
    return {
        "invocation_id": caller.invocation_id,
        "partition_key": caller.partition_key,
        "entry_index": caller.entry_index,
    }


def _entry_to_avro(entry: JournalEntry) -> Avro:
    return {
        "index": entry.index,
        "kind": _ENTRY_KIND.to_avro[entry.kind],
        "name": entry.name,
        "value": entry.value,
        "failure": _failure_to_avro(entry.failure),
    }


def _journal_to_avro(record: JournalRecord) -> Avro:
    body: tuple[str, Avro]
    # Tuple notation names the union branch, so fastavro need not try each record.
    match record:
        case EntryAppended():
            body = (_ENTRY_APPENDED, {"entry": _entry_to_avro(record.entry)})
        case AttemptCompleted():
            body = (_ATTEMPT_COMPLETED, {"output": record.output})
        case AttemptFailed():
            body = (
                _ATTEMPT_FAILED,
                {
                    "failure": _failure_to_avro(record.failure),
                    "retry_after_ms": record.retry_after_ms,
                    "hold_queue": record.hold_queue,
                },
            )
        case AttemptFenced():
            body = (_ATTEMPT_FENCED, {"reason": record.reason})
        case AttemptSuspended():
            body = (_ATTEMPT_SUSPENDED, {"awaiting_index": record.awaiting_index})
        case AttemptAlive():
            body = (_ATTEMPT_ALIVE, {})
        case _:
            assert_never(record)
    return {"invocation_id": record.invocation_id, "attempt": record.attempt, "body": body}


def _retry_to_avro(retry: RetryPolicy) -> Avro:
    return {
        "max_attempts": retry.max_attempts,
        "initial_interval_ms": retry.initial_interval_ms,
        "max_interval_ms": retry.max_interval_ms,
        "multiplier": retry.multiplier,
        "on_exhausted": _ON_EXHAUSTED.to_avro[retry.on_exhausted],
    }


def _rule_to_avro(rule: LimitRule) -> Avro:
    return {
        "id": rule.id,
        "pattern": str(rule.pattern),
        "concurrency": rule.concurrency,
        "rate_per_s": rule.rate_per_s,
        "burst": rule.burst,
        "weight": rule.weight,
        "max_queued": rule.max_queued,
        "hold_while_suspended": rule.hold_while_suspended,
        "paused": rule.paused,
    }


# Avro -> core


def _target_from_avro(record: Avro) -> Target:
    return Target(service=record["service"], handler=record["handler"], key=record["key"])


def _failure_from_avro(record: Avro) -> Failure:
    return Failure(
        message=record["message"],
        error_type=record["error_type"],
        terminal=record["terminal"],
        code=record.get("code"),
    )


def _optional_failure(record: Avro | None) -> Failure | None:
    return None if record is None else _failure_from_avro(record)


def _queue_id_from_avro(record: Avro) -> QueueId:
    return QueueId(scope=record["scope"], limit_key=record["limit_key"])


def _request_from_avro(
    record: Avro, request_id: str, target: Target, headers: Headers
) -> InvocationRequest:
    return InvocationRequest(
        id=request_id,
        target=target,
        input=record["input"],
        created_at_ms=record["created_at_ms"],
        headers=headers,
        idempotency_key=record["idempotency_key"],
        scope=record["scope"],
        limit_key=record["limit_key"],
        priority=record["priority"],
        caller=None if record["caller"] is None else Caller(**record["caller"]),
    )


def _embedded_request(record: Avro) -> InvocationRequest:
    """A request inside another record: it was accepted already, so it has its id."""
    return _request_from_avro(
        record,
        record["id"],
        _target_from_avro(record["target"]),
        tuple((h["key"], h["value"]) for h in record["headers"]),
    )


def _resume_from_avro(record: Avro) -> ResumeInvocation:
    return ResumeInvocation(
        invocation_id=record["invocation_id"], requested_at_ms=record["requested_at_ms"]
    )


def _entry_from_avro(record: Avro) -> JournalEntry:
    return JournalEntry(
        index=record["index"],
        kind=_ENTRY_KIND.from_avro[record["kind"]],
        name=record["name"],
        value=record["value"],
        failure=_optional_failure(record["failure"]),
    )


def _journal_from_avro(record: Avro) -> JournalRecord:
    invocation_id: str = record["invocation_id"]
    attempt: int = record["attempt"]
    branch, body = record["body"]
    if branch == _ENTRY_APPENDED:
        return EntryAppended(invocation_id, attempt, _entry_from_avro(body["entry"]))
    if branch == _ATTEMPT_COMPLETED:
        return AttemptCompleted(invocation_id, attempt, body["output"])
    if branch == _ATTEMPT_FAILED:
        failure = _failure_from_avro(body["failure"])
        return AttemptFailed(
            invocation_id, attempt, failure, body["retry_after_ms"], body["hold_queue"]
        )
    if branch == _ATTEMPT_FENCED:
        return AttemptFenced(invocation_id, attempt, body["reason"])
    if branch == _ATTEMPT_SUSPENDED:
        return AttemptSuspended(invocation_id, attempt, body["awaiting_index"])
    if branch == _ATTEMPT_ALIVE:
        return AttemptAlive(invocation_id, attempt)
    raise DecodeError(f"{JOURNAL}: unknown body {branch!r}")


def _dispatch_from_avro(record: Avro) -> DispatchOrder:
    return DispatchOrder(
        request=_embedded_request(record["request"]),
        attempt=record["attempt"],
        journal=tuple(_entry_from_avro(e) for e in record["journal"]),
    )


def _result_from_avro(record: Avro) -> InvocationResult:
    return InvocationResult(
        invocation_id=record["invocation_id"],
        target=_target_from_avro(record["target"]),
        status=_RESULT_STATUS.from_avro[record["status"]],
        output=record["output"],
        failure=_optional_failure(record["failure"]),
        attempts=record["attempts"],
        created_at_ms=record["created_at_ms"],
        completed_at_ms=record["completed_at_ms"],
        first_started_at_ms=record["first_started_at_ms"],
        idempotency_key=record["idempotency_key"],
    )


def _snapshot_from_avro(record: Avro) -> QueueSnapshot:
    return QueueSnapshot(
        queue_id=_queue_id_from_avro(record["queue_id"]),
        queued=record["queued"],
        running=record["running"],
        updated_at_ms=record["updated_at_ms"],
    )


def _retry_from_avro(record: Avro) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=record["max_attempts"],
        initial_interval_ms=record["initial_interval_ms"],
        max_interval_ms=record["max_interval_ms"],
        multiplier=record["multiplier"],
        on_exhausted=_ON_EXHAUSTED.from_avro[record["on_exhausted"]],
    )


def _ruleset_from_avro(record: Avro) -> RuleSet:
    return RuleSet(
        version=record["version"],
        rules=tuple(
            LimitRule(
                id=r["id"],
                pattern=RulePattern.parse(r["pattern"]),
                concurrency=r["concurrency"],
                rate_per_s=r["rate_per_s"],
                burst=r["burst"],
                weight=r["weight"],
                max_queued=r["max_queued"],
                hold_while_suspended=r["hold_while_suspended"],
                paused=r["paused"],
            )
            for r in record["rules"]
        ),
        deployments=tuple(DeploymentLimit(**d) for d in record["deployments"]),
    )


def _service_from_avro(record: Avro) -> ServiceDefinition:
    return ServiceDefinition(
        name=record["name"],
        handlers=tuple(
            HandlerDefinition(name=h["name"], retry=_retry_from_avro(h["retry"]))
            for h in record["handlers"]
        ),
        keyed=record["keyed"],
    )


def _invocation_from_avro(record: Avro) -> Invocation:
    return Invocation(
        request=_embedded_request(record["request"]),
        status=_STATUS.from_avro[record["status"]],
        attempt=record["attempt"],
        journal=tuple(_entry_from_avro(e) for e in record["journal"]),
        wake_at_ms=record["wake_at_ms"],
        fence_requested=record["fence_requested"],
        queue_seq=record["queue_seq"],
        first_started_at_ms=record["first_started_at_ms"],
        finished_at_ms=record["finished_at_ms"],
        last_failure=_optional_failure(record["last_failure"]),
        output=record["output"],
        deployment=record["deployment"],
        awaiting_since_ms=record["awaiting_since_ms"],
        awaiting_call=record["awaiting_call"],
        holds_slot=record["holds_slot"],
    )


def _facets_from_avro(record: Avro) -> InvocationFacets:
    request = record["request"]
    service = request["target"]["service"]
    return InvocationFacets(
        id=request["id"],
        status=_STATUS.from_avro[record["status"]],
        service=service,
        queue_id=QueueId.of(request["scope"], request["limit_key"], service),
        scope=request["scope"],
        priority=request["priority"],
        queue_seq=record["queue_seq"],
        deployment=record["deployment"],
        awaiting_since_ms=record["awaiting_since_ms"],
    )


def _queue_state_from_avro(record: Avro) -> VirtualQueue:
    return VirtualQueue(
        id=_queue_id_from_avro(record["id"]),
        queued=record["queued"],
        running=record["running"],
        next_seq=record["next_seq"],
        rate_tat_ms=record["rate_tat_ms"],
        paused_until_ms=record["paused_until_ms"],
        vfinish=record["vfinish"],
        awaiting_capacity=record["awaiting_capacity"],
        blocked=_verdict_from_avro(record["blocked"]),
    )


def _scope_load_from_avro(record: Avro) -> ScopeLoad:
    return ScopeLoad(**{**record, "blocked": _verdict_from_avro(record["blocked"])})


def _verdict_to_avro(verdict: Blocked | None) -> Avro | None:
    if verdict is None:
        return None
    return {
        "blocker": verdict.blocker.value,
        "level": verdict.level.value,
        "rule_id": verdict.rule_id,
        "until_ms": verdict.until_ms,
        "decided_at_ms": verdict.decided_at_ms or 0,
    }


def _verdict_from_avro(record: Avro | None) -> Blocked | None:
    if record is None:
        return None
    return Blocked(
        blocker=Blocker(record["blocker"]),
        until_ms=record["until_ms"],
        rule_id=record["rule_id"],
        level=LimitLevel(record["level"]),
        decided_at_ms=record["decided_at_ms"],
    )


def _deployment_load_from_avro(record: Avro) -> DeploymentLoad:
    return DeploymentLoad(
        deployment=record["deployment"],
        running=record["running"],
        demand=tuple((d["partition"], d["count"]) for d in record["demand"]),
        turn=record["turn"],
    )


def _completion_from_avro(record: Avro) -> CallCompletion:
    return CallCompletion(
        invocation_id=record["invocation_id"],
        entry_index=record["entry_index"],
        output=record["output"],
        failure=_optional_failure(record["failure"]),
    )


def _capacity_from_avro(record: Avro) -> CapacityMessage:
    return CapacityMessage(
        kind=_CAPACITY_KIND.from_avro[record["kind"]],
        deployment=record["deployment"],
        partition=record["partition"],
        count=record["count"],
    )
