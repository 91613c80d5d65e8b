"""JSON invocation requests, for producers without Avro (kcat, scripts, other languages).

A record on `invocations` with the header `content-type: application/json` holds one
UTF-8 JSON object:

    {"target": "Service/handler" | "Service/key/handler",   required
     "input": <any JSON value>,                              default null
     "id": str, "idempotency_key": str,                      optional
     "scope": str, "limit_key": str, "priority": 0-9}        optional

`input` is kept as its compact JSON encoding. `created_at_ms` is the record timestamp.
This is on the hot path of ingress: the decoder and encoder are built once.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from pipeline.core import ids
from pipeline.core.model import DEFAULT_PRIORITY, Headers, InvocationRequest, Target
from pipeline.errors import DecodeError, ValidationError

FIELDS = ("target", "input", "id", "idempotency_key", "scope", "limit_key", "priority")
_FIELD_SET = frozenset(FIELDS)
_OPTIONAL_STRINGS = ("id", "idempotency_key", "scope", "limit_key")


def _reject_constant(name: str) -> NoReturn:
    # Python's json accepts NaN/Infinity, which no other JSON parser reads back.
    raise DecodeError(f"invalid JSON: {name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
# json.dumps builds a new encoder per call when given separators; reuse one instead.
# allow_nan=False: a number too large for a float (1e400) parses as inf, which has no
# JSON spelling.
_COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

# Deeper input parses here but may not in a handler, whose stack starts deeper: refuse
# it at the edge rather than fail every attempt.
MAX_DEPTH = 256

_JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def json_type(value: object) -> str:
    """How JSON calls the type of a parsed value, for error messages."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def derive_id(
    target: Target, idempotency_key: str | None, *, topic: str, partition: int, offset: int
) -> str:
    """Id of a request that came without one.

    With an idempotency key, two requests with one key to one handler get one id; without
    one, a re-delivered record (same topic, partition, offset) gets the same id.
    """
    if idempotency_key:
        return ids.idempotent_id(target, idempotency_key)
    return ids.record_id(topic, partition, offset)


def parse_request(
    value: bytes,
    *,
    headers: Headers,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
) -> InvocationRequest:
    """The invocation request in a JSON record value; `headers` are the record's own."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invocation JSON is not UTF-8: byte {exc.start}: {exc.reason}") from exc
    try:
        document = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(
            f"invalid JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}"
        ) from exc
    except RecursionError as exc:
        raise DecodeError(
            "invalid JSON: nested too deeply (arrays and objects within each other)"
        ) from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise DecodeError(f"invalid JSON: {exc}") from exc
    if type(document) is not dict:
        raise DecodeError(f"invocation JSON must be an object, got {json_type(document)}")
    # Nesting cannot be deeper than the number of brackets: count them in C first.
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(document) > MAX_DEPTH:
        raise DecodeError(f"invocation JSON is nested deeper than {MAX_DEPTH} levels")
    unknown = document.keys() - _FIELD_SET
    if unknown:
        raise DecodeError(
            f"invocation JSON has unknown field(s) {', '.join(sorted(unknown))}; "
            f"allowed fields are {', '.join(FIELDS)}"
        )
    target = _target(document.get("target"))
    for name in _OPTIONAL_STRINGS:
        field = document.get(name)
        if field is not None and type(field) is not str:
            raise DecodeError(f"field {name!r} must be a string or null, got {json_type(field)}")
    key: str | None = document.get("idempotency_key")
    if key == "":
        raise DecodeError("field 'idempotency_key' must not be empty: omit it or give a key")
    priority = _priority(document.get("priority"))
    request_id = document.get("id") or derive_id(
        target, key, topic=topic, partition=partition, offset=offset
    )
    try:
        encoded_input = _COMPACT.encode(document.get("input")).encode()
    except RecursionError as exc:
        raise DecodeError("field 'input' is nested too deeply to re-encode") from exc
    except ValueError as exc:
        raise DecodeError(f"field 'input' holds a number out of range: {exc}") from exc
    try:
        return InvocationRequest(
            id=request_id,
            target=target,
            input=encoded_input,
            created_at_ms=timestamp_ms,
            headers=headers,
            idempotency_key=key,
            scope=document.get("scope"),
            limit_key=document.get("limit_key"),
            priority=priority,
        )
    except ValidationError as exc:
        raise DecodeError(f"invocation JSON is not valid: {exc}") from exc


def _depth(document: object) -> int:
    deepest = 0
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _target(value: Any) -> Target:
    if value is None:
        raise DecodeError(
            'field \'target\' is required: write "Service/handler" or "Service/key/handler"'
        )
    if type(value) is not str:
        raise DecodeError(f"field 'target' must be a string, got {json_type(value)}")
    try:
        return Target.parse(value)
    except ValidationError as exc:
        raise DecodeError(f"field 'target': {exc}") from exc


def _priority(value: Any) -> int:
    if value is None:
        return DEFAULT_PRIORITY
    # bool is an int in Python but not a number in JSON.
    if type(value) is not int or not 0 <= value <= 9:
        shown = json_type(value) if type(value) is not int else str(value)
        raise DecodeError(f"field 'priority' must be an integer from 0 to 9, got {shown}")
    return value
