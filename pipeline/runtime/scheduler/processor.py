"""The scheduler process: consume, decide, write, commit — one Kafka transaction a batch.

Commit protocol, per batch:

1. Take a batch of `invocations` and `journal` records (read_committed).
2. Decode each; an undecodable record goes to `dead-letter` with the reason; a record
   on the wrong partition for its key is forwarded to the right one.
3. Feed each event, then each due timer, to `pipeline.core.scheduler.decide`, store the
   new state and produce the effects (dispatch, results, fences).
4. Produce every key changed in this batch to the changelog, and a snapshot of each
   touched queue to `queue-state`.
5. Add the consumed offsets to the transaction and commit it.
6. Write the batch's state to the local RocksDB, with the changelog offset it reaches.

A crash anywhere before step 5 aborts the whole batch: its outputs vanish for
read_committed readers and the batch is consumed again from the committed offsets
against the state of the last committed batch. That is what makes "exactly one result
per invocation" hold under kill -9. A crash between 5 and 6 leaves RocksDB a batch
behind; restoring reads the changelog from the stored offset on, which repairs it.

No record stops a partition. A decision that raises for one invocation fails that
invocation with an internal error instead (`core.scheduler.abandon`). Anything else
that fails a batch for a reason of its content, not of Kafka's (our code raised, or
Kafka refused a record we derived), aborts it and runs its records again one per
transaction; the record that fails alone is dead-lettered with the reason, the
invocation it concerns fails, and the rest of the batch goes on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from pipeline.codec.records import WireCodec
from pipeline.core.limits import (
    RuleSet,
)
from pipeline.core.model import (
    CallCompletion,
    Caller,
    CapacityMessage,
    Failure,
    InvocationRequest,
    QueueId,
    QueueSnapshot,
    ResumeInvocation,
    ServiceDefinition,
    Target,
)
from pipeline.core.partitioning import partition_for
from pipeline.core.payload import request_too_large
from pipeline.core.scheduler import (
    Admitted,
    AppendFence,
    CallCompleted,
    CapacityGranted,
    CompleteCall,
    DeadLetter,
    Decision,
    DecisionContext,
    Dispatch,
    EmitResult,
    Event,
    Ignored,
    InvocationArrived,
    JournalArrived,
    ReleaseCapacity,
    RequestCapacity,
    ResumeRequested,
    SendInvocation,
    TimerDue,
    abandon,
    decide,
    refuse,
)
from pipeline.errors import DecodeError, RetryableError
from pipeline.kafka.config import ClientConfig
from pipeline.kafka.errors import is_fatal
from pipeline.runtime.clock import wall_clock_ms
from pipeline.runtime.consumed import ConsumedRecord, read_record
from pipeline.runtime.kafka_clients import joined_cluster
from pipeline.runtime.limit_rules import LimitRuleReader
from pipeline.runtime.scheduler.capacity import CapacityExchange, deployment_key
from pipeline.runtime.scheduler.outbox import ORIGIN_HEADER, Origin, Outbox
from pipeline.runtime.scheduler.partition_state import ChangelogWrite, Checkpoint, PartitionState
from pipeline.runtime.scheduler.queue_pump import RulesInForce, pump
from pipeline.runtime.scheduler.restore import restore
from pipeline.runtime.scheduler.service_registry import ServiceRegistry
from pipeline.runtime.scheduler.standby import StandbyCopies
from pipeline.runtime.scheduler.transactions import Stopping, Transactions, is_fenced, retrying
from pipeline.runtime.state_store import StateStore, default_state_root
from pipeline.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], int]

# Well above a batch's transaction (milliseconds to a second), and well under the
# 10 s in which another instance should serve a dead one's partitions.
_TRANSACTION_TIMEOUT_MS = 3_000
# How often the end of a journal partition with due timers is asked for: a timer
# fires up to this much late, for one round trip to the broker each time.
_JOURNAL_END_REFRESH_MS = 100
_JOURNAL_END_TIMEOUT_S = 3.0
# Standby records applied between two batches: few while this instance has work of its
# own (what following others costs its latency), many while it is idle.
_STANDBY_RECORDS_BUSY = 1_000
_STANDBY_RECORDS_IDLE = 20_000


@dataclass(frozen=True, slots=True)
class Committed:
    pass


@dataclass(frozen=True, slots=True)
class Rewound:
    """Kafka failed the transaction: aborted, and input rewound to the committed offsets."""


@dataclass(frozen=True, slots=True)
class Poisoned:
    """The transaction failed for a reason of its content; aborted, positions kept."""

    reason: str


Outcome = Committed | Rewound | Poisoned


class SchedulerProcessor:
    def __init__(
        self,
        settings: Settings,
        *,
        codec: WireCodec | None = None,
        clock: Clock = wall_clock_ms,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._names = settings.topic_names
        self._codec = codec or WireCodec()
        self._clock = clock
        self._rng = rng or random.Random()
        self._states: dict[int, PartitionState] = {}
        self._transactions: Transactions | None = None
        self._outbox: Outbox | None = None
        self._stop: threading.Event | None = None
        self._limits = settings.payload_limits
        # Records dead-lettered because they could not be read or processed at all.
        self.quarantined = 0
        self._registry: ServiceRegistry | None = None
        self._offsets: dict[tuple[str, int], int] = {}
        self._instance = settings.instance_id or uuid.uuid4().hex[:12]
        self._rules = RulesInForce()
        self._state_store: StateStore | None = None
        # Per partition, the offset after its last changelog record Kafka acknowledged:
        # the checkpoint stored with each batch.
        self._changelog_end: dict[int, int] = {}
        self._capacity = CapacityExchange(settings.runtime_partitions)
        self._standby: StandbyCopies | None = None
        self._assigned_at: float | None = None
        # Per partition, the next journal offset to read (see `_timer_horizons`).
        self._journal_read: dict[int, int] = {}
        # Per partition, when its journal's end offset was last asked for, and that end.
        self._journal_end: dict[int, tuple[int, int]] = {}

    # -- configuration ---------------------------------------------------------------

    def _client(self, config: ClientConfig) -> ClientConfig:
        return self._settings.cluster.as_role("scheduler").client(config)

    def _consumer_config(self) -> ClientConfig:
        return self._client(
            {
                "group.id": self._names.group("scheduler"),
                **self._settings.membership("scheduler"),
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                # Range assigns partition p of both input topics to one member: the
                # co-partitioning the per-partition state relies on.
                "partition.assignment.strategy": "range",
                "fetch.wait.max.ms": 10,
                "socket.nagle.disable": True,
            }
        )

    def _side_consumer_config(self) -> ClientConfig:
        return self._client(
            {
                "group.id": self._names.group("scheduler-restore"),
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )

    def _producer_config(self) -> ClientConfig:
        return self._client(
            {
                "transactional.id": f"{self._names.group('scheduler')}-{self._instance}",
                # Bounds how long readers stall behind the open transaction of a process
                # that died and is not restarted under the same instance id: the instance
                # taking over its partitions reads them only once the broker aborted it.
                "transaction.timeout.ms": _TRANSACTION_TIMEOUT_MS,
                # A transaction begun right after the last one's commit gets
                # CONCURRENT_TRANSACTIONS until the broker wrote the markers; the default
                # 100 ms backoff before retrying would stall every busy batch.
                "retry.backoff.ms": 5,
                "retry.backoff.max.ms": 50,
                "linger.ms": 1,
                "batch.num.messages": 10_000,
                "socket.nagle.disable": True,
                # Room for the largest record the runtime writes: a dead-lettered copy.
                "message.max.bytes": self._settings.catalogue.dead_letter_record_bytes + 65_536,
            }
        )

    @property
    def partitions(self) -> frozenset[int]:
        """The partitions this process holds now."""
        return frozenset(self._states)

    # -- the loop --------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self._settings = joined_cluster(self._settings, "scheduler")
        # Opened first: a second process with this instance id fails on its lock here,
        # before its producer could fence the first one's.
        self._state_store = StateStore(
            self._settings.state_dir or default_state_root(),
            self._names.group("scheduler"),
            self._settings.instance_id,
        )
        try:
            self._serve(stop)
        except Stopping as stopping:
            log.info("scheduler %s stopped: %s", self._instance, stopping)
        finally:
            self._states.clear()
            self._state_store.close()
            self._state_store = None

    def _serve(self, stop: threading.Event) -> None:
        state_store = self._state_store
        assert state_store is not None
        transactions = Transactions(self._producer_config(), stop)
        self._transactions = transactions
        catalogue = self._settings.catalogue
        self._outbox = Outbox(
            transactions,
            max_record_bytes=catalogue.max_record_bytes,
            dead_letter_topic=self._names.dead_letter,
            dead_letter_record_bytes=catalogue.dead_letter_record_bytes,
        )
        registry = ServiceRegistry(self._side_consumer_config(), self._names.services, self._codec)
        registry.catch_up(30)
        self._registry = registry
        rules = LimitRuleReader(
            self._settings.cluster.as_role("scheduler"), self._names.limits, self._codec
        )
        rules.catch_up(30)
        if self._settings.standby_copies:
            self._standby = StandbyCopies(
                state_store,
                self._side_consumer_config(),
                self._names.scheduler_state,
                self._settings.runtime_partitions,
                self._codec,
                self._clock,
            )
        consumer = self._new_consumer()
        log.info("scheduler %s started", self._instance)
        try:
            while not stop.is_set():
                registry.poll()
                rules.poll()
                if rules.ruleset().version != self._rules.version:
                    self.set_rules(rules.ruleset())
                # Looked up once a loop: each look is a RocksDB seek per partition.
                wake = self._next_wake_ms()
                batch = self._next_batch(consumer, wake)
                if any(is_fatal(m.error()) for m in batch):
                    consumer = self._renew_consumer(consumer)
                    continue
                now = self._clock()
                pending = self._capacity.pending or any(
                    s.pump_pending for s in self._states.values()
                )
                if batch or pending or (wake is not None and wake <= now):
                    self._process(consumer, batch, now)
                if self._standby is not None:
                    self._standby.poll(_STANDBY_RECORDS_BUSY if batch else _STANDBY_RECORDS_IDLE)
        finally:
            consumer.close()
            if self._standby is not None:
                self._standby.close()
                self._standby = None
            registry.close()
            rules.close()
            transactions.close(10)

    def _new_consumer(self) -> Consumer:
        consumer = Consumer(self._consumer_config())
        consumer.subscribe(
            [self._names.invocations, self._names.journal],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        return consumer

    def _renew_consumer(self, old: Consumer) -> Consumer:
        """A consumer that reported a fatal error never consumes again; seen after a
        broker restart, when the coordinator fences a static member rejoining with its
        old member id. Its partitions are dropped (their state is committed, and comes
        back from the local store when they are assigned again) and a new consumer joins."""
        log.warning("scheduler consumer failed fatally: joining the group with a new one")
        with contextlib.suppress(KafkaException, RuntimeError):
            old.close()
        self._discard()
        self._on_revoke(old, [TopicPartition(self._names.invocations, p) for p in self._states])
        return self._new_consumer()

    def _next_batch(self, consumer: Consumer, wake_ms: int | None) -> list[Message]:
        # consume(n, timeout) waits for n records or the timeout, which would add the
        # whole timeout to every lone record's latency: wait for one, then drain.
        timeout_s = 0.1 if wake_ms is None else min(max((wake_ms - self._clock()) / 1000, 0), 0.1)
        first = consumer.poll(timeout_s)
        if first is None:
            return []
        rest = consumer.consume(self._settings.scheduler_batch_max - 1, timeout=0)
        return [first, *rest]

    def _next_wake_ms(self) -> int | None:
        wakes = [w for s in self._states.values() if (w := s.next_wake_ms()) is not None]
        return min(wakes, default=None)

    def set_rules(self, ruleset: RuleSet) -> None:
        """Put new limit rules in force; waiting work is re-examined in the next batch."""
        log.info("limit rules version %d in force: %d rules", ruleset.version, len(ruleset.rules))
        affected = self._rules.put(ruleset)
        # A raised limit or an unpause wakes parked work at once.
        for state in self._states.values():
            state.pump_after_rule_change(affected)
        self._capacity.recount_all(self._states)

    def _admit_head(self, state: PartitionState, queue_id: QueueId, now: int) -> bool:
        head = state.waiting_head(queue_id)
        if head is None:
            queue = state.queue(queue_id)
            log.error("queue %s counts %d waiting but has none", queue_id, queue.queued)
            return False
        self._apply(state, head, Admitted(head), now)
        return True

    def _process(self, consumer: Consumer, batch: list[Message], now: int) -> None:
        records = self._readable(batch)
        # A lease must not be fenced for want of reports that are in the journal but
        # not read yet: a worker counts its lease from when its report was
        # acknowledged, so it could get a later step acknowledged behind the fence.
        # Timers of a partition wait until its journal has been read to an end asked
        # of the broker after they were due (and all wait while the local queue holds
        # more input).
        timers = (
            self._timer_horizons(consumer, now)
            if len(batch) < self._settings.scheduler_batch_max
            else {}
        )

        def whole_batch() -> None:
            for record in records:
                self._on_message(record, now)
            self._after_records(now, timers)

        outcome = self._transact(consumer, now, whole_batch)
        if isinstance(outcome, Poisoned):
            log.error(
                "a batch of %d records failed (%s): running them one at a time",
                len(records),
                outcome.reason,
            )
            self._isolate(consumer, records, now, timers)

    def _readable(self, batch: list[Message]) -> list[ConsumedRecord]:
        records: list[ConsumedRecord] = []
        for message in batch:
            error = message.error()
            if error is not None:
                log.warning("consumer: %s", error)
                continue
            records.append(read_record(message))
        return records

    def _timer_horizons(self, consumer: Consumer, now: int) -> dict[int, int]:
        """Per partition with a due timer, the time up to which its timers may fire:
        when the journal's end was last asked for, if the journal is read to that end.
        A report Kafka acknowledged before a timer was due is then read before the
        timer fires. The end is asked of the broker, not taken from the last fetch,
        which lags behind the journal by as long as a fetch takes to come back."""
        journal = self._names.journal
        # The position moves past transaction markers too, which a record's offset
        # does not tell; it is unknown until something was read since the assignment.
        positions = consumer.position([TopicPartition(journal, p) for p in self._states])
        for tp in positions:
            if tp.offset >= 0:
                self._journal_read[tp.partition] = tp.offset
        due = [
            p
            for p, state in self._states.items()
            if (wake := state.next_wake_ms()) is not None and wake <= now
        ]
        unknown = [TopicPartition(journal, p) for p in due if p not in self._journal_read]
        if unknown:
            # Nothing read since the assignment: start from the committed offsets (none
            # yet: from the start, where an empty journal is read to its end). Briefly,
            # so that offsets still pending in a dead instance's transaction do not hold
            # up the loop; asked again next time.
            with contextlib.suppress(KafkaException):
                for tp in consumer.committed(unknown, timeout=0.1):
                    self._journal_read[tp.partition] = max(tp.offset, 0)
        stale = [
            TopicPartition(journal, p, OFFSET_END)
            for p in due
            if self._journal_end.get(p, (-_JOURNAL_END_REFRESH_MS, 0))[0]
            <= now - _JOURNAL_END_REFRESH_MS
        ]
        if stale:
            asked_at = self._clock()
            try:
                # The broker answers with the last stable offset to a read_committed
                # consumer: the end this consumer can read to.
                ends = consumer.offsets_for_times(stale, timeout=_JOURNAL_END_TIMEOUT_S)
            except KafkaException as exc:
                log.warning("journal end offsets not known (%s): timers wait", exc)
                ends = []
            for tp in ends:
                if tp.error is None and tp.offset >= 0:
                    self._journal_end[tp.partition] = (asked_at, tp.offset)
        horizons: dict[int, int] = {}
        for p in due:
            read, asked = self._journal_read.get(p), self._journal_end.get(p)
            if read is not None and asked is not None and read >= asked[1]:
                horizons[p] = asked[0]
        return horizons

    def _after_records(self, now: int, timers: Mapping[int, int]) -> None:
        for partition, horizon in timers.items():
            state = self._states.get(partition)
            if state is not None:
                for invocation_id in state.pop_due(min(horizon, now)):
                    self._apply(state, invocation_id, TimerDue(invocation_id), now)
        for state in list(self._states.values()):
            pump(state, self._rules, now, self._admit_head)

    def _transact(self, consumer: Consumer, now: int, work: Callable[[], None]) -> Outcome:
        """Run `work` and commit its outputs, changelog and offsets in one transaction."""
        outbox, transactions = self._outbox, self._transactions
        assert outbox is not None and transactions is not None
        outbox.begin()
        try:
            work()
            self._capacity.settle(self._states, self._rules, self._start_granted(now))
            self._capacity.flush(self._send_capacity)
            writes = self._write_changes(now)
            offsets = [TopicPartition(t, p, o) for (t, p), o in self._offsets.items()]
            transactions.commit(offsets, consumer.consumer_group_metadata())
        except KafkaException as exc:
            error = exc.args[0]
            refused = None if is_fenced(error) else outbox.refusal()
            log.warning("aborting scheduler transaction: %s", refused or error)
            transactions.abort()
            if refused is not None:
                self._discard()
                return Poisoned(f"Kafka refused a record: {refused}")
            self._rewind(consumer)
            return Rewound()
        except (TimeoutError, RetryableError) as exc:
            # Kafka is slow or away (a side reader timed out): not the batch's fault.
            log.warning("aborting scheduler transaction, Kafka is not answering: %s", exc)
            transactions.abort()
            self._rewind(consumer)
            return Rewound()
        except Exception as exc:
            log.exception("scheduler transaction failed; aborting it")
            transactions.abort()
            self._discard()
            return Poisoned(f"{type(exc).__name__}: {exc}")
        self._offsets.clear()
        if self._assigned_at is not None:
            log.info(
                "partitions %s served: first batch committed %.2f s after they were assigned",
                sorted(self._states),
                time.monotonic() - self._assigned_at,
            )
            self._assigned_at = None
        # Serve the delivery reports, so the checkpoints cover this batch.
        transactions.producer.poll(0)
        for partition, state in self._states.items():
            checkpoint = Checkpoint(
                self._names.scheduler_state,
                self._changelog_end[partition],
                self._rules.version,
                now,
            )
            state.commit(writes[partition], checkpoint)
        return Committed()

    def _isolate(
        self,
        consumer: Consumer,
        records: list[ConsumedRecord],
        now: int,
        timers: Mapping[int, int],
    ) -> None:
        """Each record in a transaction of its own; one that fails alone is quarantined."""
        for record in records:
            outcome = self._transact(
                consumer, now, functools.partial(self._on_message, record, now)
            )
            if isinstance(outcome, Poisoned):
                outcome = self._quarantine(consumer, record, outcome.reason, now)
            if isinstance(outcome, Rewound):
                return  # what is left comes again from the committed offsets
        outcome = self._transact(consumer, now, lambda: self._after_records(now, timers))
        if isinstance(outcome, Poisoned):
            # No record to blame: the next loop tries again, and its records go on.
            log.error("timers and queue pump failed: %s", outcome.reason)

    def _quarantine(
        self,
        consumer: Consumer,
        record: ConsumedRecord,
        reason: str,
        now: int,
    ) -> Outcome:
        """Dead-letter `record`, which fails whenever it is processed, and fail the
        invocation it concerns; if even that fails, dead-letter its coordinates alone."""
        outbox = self._outbox
        assert outbox is not None
        self.quarantined += 1
        why = f"processing the record failed: {reason}"

        def with_invocation() -> None:
            self._offsets[(record.topic, record.partition)] = record.offset + 1
            outbox.dead_letter(record, why, Origin.of(record))
            self._abandon_concerned(record, why, now)

        def alone() -> None:
            self._offsets[(record.topic, record.partition)] = record.offset + 1
            bare = ConsumedRecord(
                record.topic,
                record.partition,
                record.offset,
                None,
                None,
                (),
                record.timestamp_ms,
                record.unreadable,
            )
            outbox.dead_letter(bare, why, Origin.of(record))

        outcome = self._transact(consumer, now, with_invocation)
        if isinstance(outcome, Poisoned):
            outcome = self._transact(consumer, now, alone)
        if isinstance(outcome, Poisoned):
            raise RuntimeError(f"cannot even dead-letter {record.where()}: {outcome.reason}")
        return outcome

    def _abandon_concerned(self, record: ConsumedRecord, reason: str, now: int) -> None:
        """Fail the invocation a poisoned record is about, if it can be told which."""
        state = self._states.get(record.partition)
        if state is None or record.value is None:
            return
        invocation_id: str | None = None
        request: InvocationRequest | None = None
        try:
            if record.topic == self._names.journal:
                invocation_id = self._codec.decode_journal(record.value).invocation_id
            else:
                decoded = self._decode_invocations_record(record, Origin.of(record))
                if isinstance(decoded, InvocationRequest):
                    request = decoded
                elif not isinstance(decoded, CapacityMessage):
                    invocation_id = decoded.invocation_id
        except DecodeError:
            return
        if request is not None:
            if state.invocation(request.id) is not None:
                return  # a duplicate: the invocation already in state is not its to fail
            failure = Failure(reason, "InternalError", terminal=True)
            decision = refuse(request, failure, self._context(request, None, now))
            self._store(state, request.id, decision, now)
            self._execute(state, decision, None, now)
            return
        if invocation_id is None:
            return
        invocation = state.invocation(invocation_id)
        if invocation is None:
            return
        decision = abandon(
            invocation,
            state.queue(invocation.queue_id),
            reason,
            self._context(invocation.request, invocation, now),
        )
        self._store(state, invocation_id, decision, now)
        self._execute(state, decision, None, now)

    def _discard(self) -> None:
        """The transaction aborted: state goes back to the last committed batch."""
        self._offsets.clear()
        self._capacity.discard()
        for state in self._states.values():
            state.discard()
        # What was due to be granted may have been due before this batch.
        self._capacity.recount_all(self._states)

    def _rewind(self, consumer: Consumer) -> None:
        """After an abort, state and positions go back to the last committed batch."""
        self._discard()
        self._journal_read.clear()
        self._journal_end.clear()
        committed = retrying(
            "committed offsets",
            lambda: consumer.committed(consumer.assignment(), timeout=10),
            self._stop,
        )
        for tp in committed:
            position = TopicPartition(tp.topic, tp.partition, max(tp.offset, 0))
            retrying(
                "seek to the committed offset",
                functools.partial(consumer.seek, position),
                self._stop,
            )

    # -- rebalancing -----------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assigned = {tp.partition for tp in partitions}
        self._assigned_at = time.monotonic()
        if self._standby is not None:
            # Their copies are committed first, so each restore reads only the tail.
            self._standby.follow_all_but(assigned | set(self._states))
        for p in sorted(assigned):
            if p not in self._states:
                self._states[p] = self._restore(p)
                # The caps may have changed while no one held this partition.
                self._capacity.recount_all({p: self._states[p]})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in {tp.partition for tp in partitions}:
            self._states.pop(p, None)
            self._changelog_end.pop(p, None)
            self._journal_read.pop(p, None)
            self._journal_end.pop(p, None)
        self._offsets = {k: v for k, v in self._offsets.items() if k[1] in self._states}
        if self._standby is not None:
            self._standby.follow_all_but(set(self._states))

    def _restore(self, partition: int) -> PartitionState:
        assert self._state_store is not None
        state = restore(
            self._state_store,
            self._side_consumer_config(),
            self._names.scheduler_state,
            partition,
            self._codec,
            rules_version=self._rules.version,
            now_ms=self._clock(),
        )
        checkpoint = state.checkpoint()
        self._changelog_end[partition] = 0 if checkpoint is None else checkpoint.offset
        return state

    # -- events ----------------------------------------------------------------------

    def _on_message(self, record: ConsumedRecord, now: int) -> None:
        self._offsets[(record.topic, record.partition)] = record.offset + 1
        state = self._states.get(record.partition)
        if state is None:
            log.warning("record %s for an unassigned partition skipped", record.where())
            return
        outbox = self._outbox
        assert outbox is not None
        if record.unreadable is not None:
            self.quarantined += 1
            outbox.dead_letter(record, f"record unreadable: {record.unreadable}")
            return
        try:
            if record.topic == self._names.invocations:
                self._on_invocation(state, record, now)
            else:
                journal = self._codec.decode_journal(record.value or b"")
                self._apply(state, journal.invocation_id, JournalArrived(journal), now, record)
        except DecodeError as exc:
            outbox.dead_letter(record, str(exc), Origin.of(record))

    def _decode_invocations_record(
        self, record: ConsumedRecord, origin: Origin | None
    ) -> InvocationRequest | ResumeInvocation | CapacityMessage | CallCompletion:
        # A forwarded request is read as where it first arrived: an id derived from its
        # coordinates is the same on either partition.
        where = record if origin is None else origin
        headers = record.headers if origin is None else _own_headers(record)
        return self._codec.decode_invocations_record(
            record.value or b"",
            headers=headers,
            topic=where.topic,
            partition=where.partition,
            offset=where.offset,
            timestamp_ms=record.timestamp_ms,
        )

    def _on_invocation(self, state: PartitionState, record: ConsumedRecord, now: int) -> None:
        origin = Origin.of(record)
        decoded = self._decode_invocations_record(record, origin)
        if isinstance(decoded, ResumeInvocation):
            self._on_resume(state, decoded, now)
            return
        if isinstance(decoded, CapacityMessage):
            self._capacity.on_message(state, decoded, self._start_granted(now))
            return
        if isinstance(decoded, CallCompletion):
            self._apply(state, decoded.invocation_id, CallCompleted(decoded), now)
            return
        request = decoded
        outbox = self._outbox
        assert outbox is not None
        too_large = request_too_large(request, self._limits, record.size)
        if too_large is not None:
            # Refused where it first arrives, before anything carries it further.
            outbox.dead_letter(record, too_large, origin)
            return
        home = partition_for(request.partition_key, self._settings.runtime_partitions)
        if home != state.partition:
            # Forwarded as it came, so that its home reads it, and dead-letters it if it
            # must, exactly as this partition would have.
            first = origin or Origin(record.topic, record.partition, record.offset, record.key)
            outbox.send(
                self._names.invocations,
                home,
                request.partition_key.encode(),
                record.value,
                [*_own_headers(record), *first.headers()],
                timestamp_ms=record.timestamp_ms,
            )
            return
        self._apply(state, request.id, InvocationArrived(request), now, record)

    def _on_resume(self, state: PartitionState, command: ResumeInvocation, now: int) -> None:
        # A command carries no partition key, so unlike a request it cannot be forwarded:
        # the sender must have put it on the invocation's partition.
        if state.invocation(command.invocation_id) is None:
            log.warning(
                "resume of invocation %r ignored: partition %d does not hold it (it was "
                "forgotten, or the command was sent with the wrong partition key)",
                command.invocation_id,
                state.partition,
            )
            return
        self._apply(state, command.invocation_id, ResumeRequested(command.invocation_id), now)

    def _context(
        self, request: InvocationRequest, invocation: object | None, now: int
    ) -> DecisionContext:
        service = self._service(request.target, refresh=invocation is None)
        return DecisionContext(
            now,
            service.handler(request.target.handler) if service is not None else None,
            self._settings.lease_timeout_ms,
            self._rng.random(),
            retention_ms=self._settings.retention_ms,
            rule=self._rules.rule_for(request.queue_id),
            direct_start=self._rules.scope_rule_for(request.queue_id.scope) is None,
            capped_deployment=(
                request.target.service
                if self._rules.deployment_limit(request.target.service) is not None
                else None
            ),
            limits=self._limits,
            heartbeat_timeout_ms=self._settings.heartbeat_timeout_ms,
            service_keyed=service.keyed if service is not None else None,
        )

    def _apply(
        self,
        state: PartitionState,
        invocation_id: str,
        event: Event,
        now: int,
        source: ConsumedRecord | None = None,
    ) -> None:
        invocation = state.invocation(invocation_id)
        if isinstance(event, InvocationArrived):
            request = event.request
        elif invocation is not None:
            request = invocation.request
        else:
            log.debug("event for unknown invocation %r ignored", invocation_id)
            return
        queue = state.queue(request.queue_id)
        context = self._context(request, invocation, now)
        try:
            decision = decide(invocation, queue, event, context)
        except Exception as exc:
            # A bug in a decision fails one invocation, not its partition (for good:
            # the same batch would raise again after a restart).
            log.exception("deciding %s for %r failed", type(event).__name__, invocation_id)
            reason = (
                f"the scheduler failed deciding {type(event).__name__} for invocation "
                f"{invocation_id!r}: {type(exc).__name__}: {exc}"
            )
            decision = (
                refuse(request, Failure(reason, "InternalError", True), context)
                if invocation is None
                else abandon(invocation, queue, reason, context)
            )
            outbox = self._outbox
            assert outbox is not None
            if source is not None:
                outbox.dead_letter(source, reason, Origin.of(source))
            else:
                outbox.dead_letter_event(invocation_id, reason)
        self._store(state, invocation_id, decision, now)
        self._execute(state, decision, source, now)

    def _service(self, target: Target, *, refresh: bool) -> ServiceDefinition | None:
        registry = self._registry
        assert registry is not None
        service = registry.service(target.service)
        if refresh and (service is None or service.handler(target.handler) is None):
            # A worker may have announced the service a moment ago: read the registry to
            # its end before turning a new invocation away.
            registry.catch_up()
            service = registry.service(target.service)
        return service

    def _store(
        self, state: PartitionState, invocation_id: str, decision: Decision, now: int
    ) -> None:
        if decision.forget:
            state.forget_invocation(invocation_id)
        if decision.invocation is not None:
            state.put_invocation(decision.invocation)
        if decision.queue is not None:
            state.put_queue(decision.queue, now)

    def _execute(
        self, state: PartitionState, decision: Decision, source: ConsumedRecord | None, now: int
    ) -> None:
        for effect in decision.effects:
            match effect:
                case Dispatch(order=order):
                    # The worker counts the attempt's lease from the record's time: the
                    # time the scheduler counts it from, not the later time of sending.
                    self._produce(
                        self._names.dispatch,
                        state.partition,
                        order.request.partition_key,
                        self._codec.encode_dispatch(order),
                        timestamp_ms=now,
                    )
                case EmitResult(result=result):
                    self._produce(
                        self._names.results,
                        partition_for(result.invocation_id, self._settings.results_partitions),
                        result.invocation_id,
                        self._codec.encode_result(result),
                    )
                case AppendFence(fence=fence, partition_key=key):
                    self._produce(
                        self._names.journal, state.partition, key, self._codec.encode_journal(fence)
                    )
                case SendInvocation(encoded_request=encoded):
                    self._send_invocation(state, encoded)
                case CompleteCall(caller=caller, completion=completion):
                    self._complete_call(caller, completion, now)
                case RequestCapacity(deployment=deployment):
                    self._capacity.request(self._states, state.partition, deployment)
                case ReleaseCapacity(deployment=deployment):
                    self._capacity.release(self._states, state.partition, deployment)
                case DeadLetter(reason=reason):
                    if source is not None and self._outbox is not None:
                        self._outbox.dead_letter(source, reason, Origin.of(source))
                case Ignored(reason=reason):
                    log.debug("ignored: %s", reason)

    def _send_invocation(self, state: PartitionState, encoded: bytes) -> None:
        """Put a request a handler journaled on the partition of its partition key."""
        topic = self._names.invocations
        try:
            request = self._codec.decode_request(
                encoded,
                headers=[],
                topic=topic,
                partition=state.partition,
                offset=0,
                timestamp_ms=0,
            )
        except DecodeError as exc:
            # The worker encoded it with this codec; failing here is a bug, not bad input.
            log.error("journaled request undecodable, not sent: %s", exc)
            return
        home = partition_for(request.partition_key, self._settings.runtime_partitions)
        self._produce(topic, home, request.partition_key, encoded)

    def _complete_call(self, caller: Caller, completion: CallCompletion, now: int) -> None:
        """Hand a callee's outcome to its caller's partition, in this transaction."""
        home = partition_for(caller.partition_key, self._settings.runtime_partitions)
        state = self._states.get(home)
        if state is not None:
            self._apply(state, caller.invocation_id, CallCompleted(completion), now)
            return
        self._produce(
            self._names.invocations,
            home,
            caller.partition_key,
            self._codec.encode_call_completion(completion),
        )

    def _start_granted(self, now: int) -> Callable[[PartitionState, str, str], None]:
        def start(state: PartitionState, invocation_id: str, deployment: str) -> None:
            self._apply(state, invocation_id, CapacityGranted(invocation_id, deployment), now)

        return start

    def _send_capacity(self, partition: int, message: CapacityMessage) -> None:
        key = deployment_key(message.deployment)
        self._produce(self._names.invocations, partition, key, self._codec.encode_capacity(message))

    # -- output ----------------------------------------------------------------------

    def _write_changes(self, now: int) -> dict[int, list[ChangelogWrite]]:
        changelog = self._names.scheduler_state
        writes: dict[int, list[ChangelogWrite]] = {}
        for partition, state in self._states.items():
            writes[partition] = state.changelog_writes()
            for write in writes[partition]:
                self._send(
                    changelog,
                    partition,
                    write.key.encode(),
                    write.value,
                    on_delivery=self._changelog_delivered,
                )
            for queue_id, queue in state.changed_queues():
                key = str(queue_id)
                snapshot = (
                    None
                    if queue is None
                    else self._codec.encode_queue_snapshot(
                        QueueSnapshot(queue_id, queue.queued, queue.running, now)
                    )
                )
                self._produce(self._names.queue_state, partition, key, snapshot)
        return writes

    def _changelog_delivered(self, error: KafkaError | None, message: Message) -> None:
        partition, offset = message.partition(), message.offset()
        if error is None and partition is not None and offset is not None:
            end = self._changelog_end.get(partition, 0)
            self._changelog_end[partition] = max(end, offset + 1)

    def _produce(
        self, topic: str, partition: int, key: str, value: bytes | None, *, timestamp_ms: int = 0
    ) -> None:
        self._send(topic, partition, key.encode(), value, timestamp_ms=timestamp_ms)

    def _send(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
        *,
        timestamp_ms: int = 0,
    ) -> None:
        outbox = self._outbox
        assert outbox is not None
        outbox.send(
            topic, partition, key, value, timestamp_ms=timestamp_ms, on_delivery=on_delivery
        )


def _own_headers(record: ConsumedRecord) -> list[tuple[str, bytes]]:
    """The record's headers without those a forwarding scheduler added."""
    return [(k, v) for k, v in record.headers if not k.startswith(ORIGIN_HEADER)]
