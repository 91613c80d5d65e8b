"""Micro-benchmark of the wire codec: `python bench/codec_bench.py [--number N]`.

Prints microseconds per encode and per decode (best of several repeats, so that noise
from other processes inflates nothing) and the encoded size, for the records on the
hot path: an invocation request, a journal record, a dispatch with a 10-entry journal,
and a JSON invocation request.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from pipeline.codec import WireCodec
from pipeline.core.model import (
    DispatchOrder,
    EntryAppended,
    EntryKind,
    InvocationRequest,
    JournalEntry,
    Target,
)


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=20_000, help="ops per repeat")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    codec = WireCodec()
    request = InvocationRequest(
        id="inv-01HZX3K9Q2",
        target=Target("Checkout", "pay", key="cart-42"),
        input=b'{"amount":1999,"currency":"EUR","items":[1,2,3]}',
        created_at_ms=1_700_000_000_000,
        headers=(("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),),
        idempotency_key="order-7",
        scope="acme",
        limit_key="user-1",
        priority=3,
    )
    journal = tuple(
        JournalEntry(i, EntryKind.RUN, f"step-{i}", value=b'{"ok":true,"n":%d}' % i)
        for i in range(10)
    )
    entry = EntryAppended(request.id, 1, journal[3])
    order = DispatchOrder(request, attempt=2, journal=journal)
    json_value = (
        b'{"target":"Checkout/cart-42/pay","input":{"amount":1999,"currency":"EUR"},'
        b'"idempotency_key":"order-7","scope":"acme","limit_key":"user-1","priority":3}'
    )
    kafka_headers = [("content-type", b"application/json"), request.headers[0]]

    def ingest(value: bytes, headers: list[tuple[str, bytes]]) -> InvocationRequest:
        return codec.decode_request(
            value, headers=headers, topic="invocations", partition=0, offset=1, timestamp_ms=1
        )

    request_bytes = codec.encode_request(request)
    entry_bytes = codec.encode_journal(entry)
    order_bytes = codec.encode_dispatch(order)
    cases: list[tuple[str, int, Callable[[], object], Callable[[], object]]] = [
        (
            "InvocationRequest",
            len(request_bytes),
            lambda: codec.encode_request(request),
            lambda: ingest(request_bytes, []),
        ),
        (
            "JournalRecord (EntryAppended)",
            len(entry_bytes),
            lambda: codec.encode_journal(entry),
            lambda: codec.decode_journal(entry_bytes),
        ),
        (
            "DispatchOrder (10 entries)",
            len(order_bytes),
            lambda: codec.encode_dispatch(order),
            lambda: codec.decode_dispatch(order_bytes),
        ),
    ]
    print(f"{'record':32} {'bytes':>6} {'encode us':>10} {'decode us':>10}")
    for name, size, encode, decode in cases:
        enc = best_us(encode, args.number, args.repeat)
        dec = best_us(decode, args.number, args.repeat)
        print(f"{name:32} {size:6d} {enc:10.2f} {dec:10.2f}")
    ingress = best_us(
        lambda: ingest(json_value, kafka_headers),
        args.number,
        args.repeat,
    )
    print(f"{'InvocationRequest from JSON':32} {len(json_value):6d} {'-':>10} {ingress:10.2f}")


if __name__ == "__main__":
    main()
