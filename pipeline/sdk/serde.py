"""How handler inputs, outputs and step values become the bytes the journal stores."""

from __future__ import annotations

import json
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Serde(Protocol[T]):
    """Turns values into bytes and back; must be deterministic across processes."""

    def serialize(self, value: T) -> bytes: ...

    def deserialize(self, data: bytes) -> T: ...


class JsonSerde:
    """Compact UTF-8 JSON. Empty bytes read as None, so an invocation sent without input
    reaches a handler that takes a request as `None` instead of failing."""

    def serialize(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def deserialize(self, data: bytes) -> Any:
        if not data:
            return None
        return json.loads(data)

    def __repr__(self) -> str:
        return "JsonSerde()"


class BytesSerde:
    """Raw bytes, untouched: for handlers that bring their own encoding."""

    def serialize(self, value: bytes) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"BytesSerde serializes bytes, got {type(value).__name__}")
        return bytes(value)

    def deserialize(self, data: bytes) -> bytes:
        return data

    def __repr__(self) -> str:
        return "BytesSerde()"
