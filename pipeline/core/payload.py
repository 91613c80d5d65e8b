"""How big an invocation may grow, and how its size is counted.

Everything the scheduler keeps about an invocation is one record of its changelog: the
request, the journal, the output and the last failure. Each part has its own limit, and
the limits together stay under the largest record the runtime topics take
(`PayloadLimits.record_bytes_needed`), so no record the runtime derives from an
accepted invocation can be too large for Kafka. Sizes are counted on the payload bytes
and strings, plus a fixed allowance per header and entry for the encoding's framing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from pipeline.core.model import EntryKind, Failure, InvocationRequest, JournalEntry

KIB = 1024
# Avro framing per header (two length prefixes) and per journal entry (index, kind,
# unions, length prefixes): generous, so that a count stays above the encoded size.
_PER_HEADER = 8
_PER_ENTRY = 32
_PER_REQUEST = 64
# Room in a state record for everything but the payloads: status, timers, counters.
ENVELOPE_BYTES = 64 * KIB
PAYLOAD_TOO_LARGE = "PayloadTooLarge"


@dataclass(frozen=True, slots=True)
class PayloadLimits:
    """Per invocation: the request (input, headers and ids), the output, the journal
    (every step's value, and the requests of sends and calls), and a failure's
    message, which is cut rather than refused."""

    max_request_bytes: int = 256 * KIB
    max_output_bytes: int = 256 * KIB
    max_journal_bytes: int = 384 * KIB
    max_failure_message_chars: int = 4 * KIB

    @property
    def record_bytes_needed(self) -> int:
        """The smallest record limit (`max.message.bytes`) that carries every record
        derived from an invocation within these limits."""
        failure = 4 * self.max_failure_message_chars  # UTF-8: up to 4 bytes a character
        return (
            # The id is the changelog record's key and again part of the request.
            2 * self.max_request_bytes
            + self.max_output_bytes
            + self.max_journal_bytes
            + failure
            + ENVELOPE_BYTES
        )


def _text_bytes(text: str | None) -> int:
    # str.encode would allocate a copy; a character is at most 4 bytes of UTF-8.
    return 0 if text is None else (len(text) if text.isascii() else 4 * len(text))


def request_bytes(request: InvocationRequest) -> int:
    """The request's size as the runtime stores it: input, headers, ids and target."""
    size = _PER_REQUEST + len(request.input)
    for name, value in request.headers:
        size += _PER_HEADER + _text_bytes(name) + len(value)
    target = request.target
    for text in (
        request.id,
        request.idempotency_key,
        request.scope,
        request.limit_key,
        target.service,
        target.handler,
        target.key,
    ):
        size += _text_bytes(text)
    caller = request.caller
    if caller is not None:
        size += _text_bytes(caller.invocation_id) + _text_bytes(caller.partition_key)
    return size


def entry_bytes(entry: JournalEntry) -> int:
    size = _PER_ENTRY + _text_bytes(entry.name) + len(entry.value or b"")
    if entry.failure is not None:
        size += _text_bytes(entry.failure.message) + _text_bytes(entry.failure.error_type)
    return size


def journal_bytes(journal: Iterable[JournalEntry]) -> int:
    return sum(entry_bytes(entry) for entry in journal)


def request_too_large(
    request: InvocationRequest, limits: PayloadLimits, record_bytes: int = 0
) -> str | None:
    """Why the request is refused for its size, or None. `record_bytes` is the size of
    the record it came in (key, value and headers): a record that is mostly padding
    must not be forwarded between partitions either."""
    size = max(request_bytes(request), record_bytes)
    if size <= limits.max_request_bytes:
        return None
    return (
        f"request {request.id[:200]!r} is {size} bytes (input, headers and ids), over "
        f"max_request_bytes={limits.max_request_bytes}: send large payloads by reference"
    )


def output_too_large(output: bytes, limits: PayloadLimits) -> str | None:
    if len(output) <= limits.max_output_bytes:
        return None
    return (
        f"the handler's output is {len(output)} bytes, over "
        f"max_output_bytes={limits.max_output_bytes}"
    )


def journal_too_large(journal_size: int, entry: JournalEntry, limits: PayloadLimits) -> str | None:
    """Why `entry` may not join a journal of `journal_size` bytes, or None: the journal
    would grow over its limit, or the entry sends a request larger than any may be."""
    if entry.value is not None and entry.kind in (EntryKind.SEND, EntryKind.CALL):
        sent = len(entry.value)
        if sent > limits.max_request_bytes:
            return (
                f"entry {entry.index} ({entry.kind.value} {entry.name[:200]!r}) carries a "
                f"request of {sent} bytes, over max_request_bytes={limits.max_request_bytes}"
            )
    return grown_too_large(journal_size, entry, limits)


def grown_too_large(journal_size: int, entry: JournalEntry, limits: PayloadLimits) -> str | None:
    """Why a journal of `journal_size` bytes cannot take `entry` as well, or None."""
    total = journal_size + entry_bytes(entry)
    if total <= limits.max_journal_bytes:
        return None
    return (
        f"entry {entry.index} ({entry.kind.value} {entry.name[:200]!r}) would make the "
        f"journal {total} bytes, over max_journal_bytes={limits.max_journal_bytes}"
    )


def too_large_failure(reason: str) -> Failure:
    return Failure(reason, PAYLOAD_TOO_LARGE, terminal=True)


def cut_failure(failure: Failure, limits: PayloadLimits) -> Failure:
    """The failure with its message and type cut to the limit, marked where cut."""
    most = limits.max_failure_message_chars
    message, error_type = failure.message, failure.error_type
    if len(message) <= most and len(error_type) <= 256:
        return failure
    if len(message) > most:
        message = f"{message[:most]}... [{len(message) - most} characters cut]"
    return replace(failure, message=message, error_type=error_type[:256])
