"""The limit rule set on its compacted control topic: reading, writing, and the two combined.

The topic has one partition and one key, `rules`: each record holds the whole rule set,
so a batch of changes lands as one record or not at all. Readers keep the record with
the greatest version and ignore any other, so a late or concurrent stale write never
takes rules back.

Writers in one process are serialized by `LimitRuleStore`. Two processes that change
the rules at the same moment can both write the same next version: live readers keep
the record that came first and log the other as stale, but compaction keeps only the
last record of the key, so a reader that starts after compaction could see the other.
Change rules from one process at a time (the Admin API, or the CLI).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from pipeline.codec.records import WireCodec
from pipeline.core.limits import RuleSet
from pipeline.errors import ConflictError, RetryableError, TooLarge, ValidationError
from pipeline.kafka.config import ClusterConfig
from pipeline.runtime.confirmed_send import DEFAULT_ACK_TIMEOUT_S, ConfirmedProducer

log = logging.getLogger(__name__)

RULES_KEY = b"rules"
"""The one key of the limits topic: compaction keeps only its newest record."""


MAX_RULES_RECORD_BYTES = 1_000_000
"""The producer's default `message.max.bytes`: the whole rule set is one record."""

_POLL_BATCH = 100
_MAX_POLL_WAIT_S = 0.5


def decode_record(codec: WireCodec, key: bytes | None, value: bytes | None) -> RuleSet | None:
    """The rule set a record of the limits topic holds; None for a record to skip.

    Raises `DecodeError` when the value is not a valid rule set.
    """
    if key != RULES_KEY:
        log.warning("limits topic: skipping a record with key %r, not %r", key, RULES_KEY)
        return None
    if value is None:
        # Nothing writes tombstones; taking one as "no rules" would lift every limit.
        log.warning("limits topic: ignoring a tombstone; the rules in force stay")
        return None
    return codec.decode_ruleset(value)


def newest(current: RuleSet, candidate: RuleSet) -> RuleSet:
    """The rule set to keep: `candidate` only when its version is greater."""
    if candidate.version > current.version:
        return candidate
    if candidate != current:
        # A late copy of older rules, or the loser of two writers of one version.
        log.warning(
            "limits topic: ignoring rule set version %d: version %d is in force already",
            candidate.version,
            current.version,
        )
    return current


class LimitRuleReader:
    """Reads the limits topic from the beginning, in the calling thread; keeps the newest.

    For a processing loop (the scheduler): `poll` takes what has arrived without
    waiting; `catch_up` reads up to the end of the topic.
    """

    def __init__(self, cluster: ClusterConfig, topic: str, codec: WireCodec) -> None:
        self._codec = codec
        self._topic = topic
        self._ruleset = RuleSet()
        self._position = 0
        self._caught_up = False
        self._consumer = Consumer(
            cluster.client(
                {
                    # Required by the client though the reader never joins the group: the
                    # partition is assigned by hand and no offset is ever committed.
                    "group.id": "pipeline.limits.unused",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "isolation.level": "read_committed",
                    # Tells the reader it reached the end even when the last offset is a
                    # transaction marker that no message carries.
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                }
            )
        )
        self._partition = TopicPartition(topic, 0)
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])

    def ruleset(self) -> RuleSet:
        """The newest rule set read (or offered) so far; version 0 before any."""
        return self._ruleset

    @property
    def caught_up(self) -> bool:
        """True once `catch_up` has returned."""
        return self._caught_up

    def offer(self, ruleset: RuleSet) -> bool:
        """Take a rule set this process wrote, before it comes back through Kafka."""
        kept = newest(self._ruleset, ruleset)
        changed = kept is not self._ruleset
        self._ruleset = kept
        return changed

    def poll(self) -> None:
        """Take what has arrived, without waiting."""
        for message in self._consumer.consume(_POLL_BATCH, timeout=0):
            self._apply(message)

    def catch_up(self, timeout_s: float = 10.0) -> None:
        """Read up to the end the topic has now; `RetryableError` if that takes too long."""
        deadline = time.monotonic() + timeout_s
        try:
            _, high = self._consumer.get_watermark_offsets(
                self._partition, timeout=timeout_s, cached=False
            )
        except KafkaException as exc:
            raise RetryableError(
                f"cannot read the end offset of {self._topic!r}: {exc}; check the broker "
                "and that the topic exists (`pipeline topics create`)"
            ) from exc
        while self._position < high:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RetryableError(
                    f"limit rules not read up to offset {high} of {self._topic!r} in "
                    f"{timeout_s:g} s (at {self._position}): an open transaction on the "
                    "topic or a slow broker holds the reader back; retry"
                )
            message = self._consumer.poll(min(remaining, _MAX_POLL_WAIT_S))
            if message is not None:
                self._apply(message)
        self._caught_up = True

    def close(self) -> None:
        self._consumer.close()

    def _apply(self, message: Message) -> None:
        offset, error = message.offset(), message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                if offset is not None:
                    self._position = max(self._position, offset)
            else:
                log.warning("limits topic %s: %s", self._topic, error)
            return
        if offset is not None:
            self._position = max(self._position, offset + 1)
        try:
            candidate = decode_record(self._codec, message.key(), message.value())
        except ValidationError as exc:
            # One bad record must not stop the limits from being read: skip it.
            log.warning(
                "limits topic %s: skipping record at offset %s: %s", self._topic, offset, exc
            )
            return
        if candidate is not None:
            self._ruleset = newest(self._ruleset, candidate)


class LimitRuleWriter:
    """Writes whole rule sets to the limits topic; each write returns once Kafka has it."""

    def __init__(
        self,
        cluster: ClusterConfig,
        topic: str,
        codec: WireCodec,
        *,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
    ) -> None:
        self._topic = topic
        self._codec = codec
        self._producer = ConfirmedProducer(cluster, "pipeline-limits", ack_timeout_s=ack_timeout_s)

    def write(self, ruleset: RuleSet) -> None:
        """Write `ruleset`; `RetryableError` when Kafka did not acknowledge it in time,
        `TooLarge` when it does not fit in one record (no retry can help)."""
        encoded = self._codec.encode_ruleset(ruleset)
        if len(encoded) > MAX_RULES_RECORD_BYTES:
            raise TooLarge(
                f"limit rules version {ruleset.version} ({len(ruleset.rules)} rules) encode to "
                f"{len(encoded)} bytes, more than the {MAX_RULES_RECORD_BYTES} bytes of one "
                f"record of {self._topic}: delete rules no longer needed, or cover queues "
                "with fewer, broader patterns"
            )
        self._producer.send(
            self._topic,
            RULES_KEY,
            encoded,
            partition=0,
            what=f"limit rules version {ruleset.version}",
            # It may still land; a retry then computes the next version from what readers see.
            on_timeout="check that the broker is reachable, then read the rules and retry",
        )

    def close(self, timeout_s: float = DEFAULT_ACK_TIMEOUT_S) -> None:
        self._producer.close(timeout_s)


class RuleSetCache(Protocol):
    """What holds the rule set a process has read: a reader or a view."""

    def ruleset(self) -> RuleSet: ...

    def offer(self, ruleset: RuleSet) -> bool: ...

    @property
    def caught_up(self) -> bool:
        """Whether the topic was read up to its end once: before, the version may be stale."""
        ...


class RuleSetWriter(Protocol):
    """What makes a rule set durable: `LimitRuleWriter`."""

    def write(self, ruleset: RuleSet) -> None: ...


class LimitRuleStore:
    """Rules as this process last read or wrote them; writes go through Kafka.

    A written rule set is offered to the cache at once, so that this process reads its
    own write without waiting for the record to come back; the record is then ignored
    as not newer. Only the successor of the version in force may be written: with that
    check under one lock, two writers in this process can never both write a version.
    """

    def __init__(self, cache: RuleSetCache, writer: RuleSetWriter) -> None:
        self._cache = cache
        self._writer = writer
        self._lock = threading.Lock()

    def ruleset(self) -> RuleSet:
        return self._cache.ruleset()

    def write(self, ruleset: RuleSet) -> None:
        if not self._cache.caught_up:
            # A version derived from stale rules would be ignored by every reader.
            raise RetryableError(
                "limit rules are still being read from Kafka, so a change now could be "
                "based on old rules: retry in a moment",
                retry_after_ms=1_000,
            )
        with self._lock:
            current = self._cache.ruleset()
            if ruleset.version != current.version + 1:
                raise ConflictError(
                    f"rule set version {ruleset.version} does not follow version "
                    f"{current.version}, the one in force: read the rules again and retry"
                )
            self._writer.write(ruleset)
            self._cache.offer(ruleset)
