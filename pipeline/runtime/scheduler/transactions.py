"""The scheduler's transactional producer, riding out broker outages.

Every call waits at most `_CALL_TIMEOUT_S`, and that bound is ours, not only
librdkafka's: its `send_offsets_to_transaction` can wait for ever for a group
coordinator that went away (librdkafka #5456 and #5511, seen here after a broker
restart), so each call runs on a thread of its own and a producer whose call outlives
the bound is abandoned and replaced. A commit that fails for any reason
(the broker away, the transaction lost) is aborted, and the caller runs its batch
again from its last committed state; an abort that does not go through in time, or a
producer that reports a fatal error, is replaced by a new producer under the same
transactional id, whose `init_transactions` aborts what the old one left open and is
retried, logged every few seconds, until the broker answers.

"Fenced" is fatal too, and has two causes that look alike: an outage longer than the
transaction timeout (the coordinator aborted the open transaction and bumped the
epoch), or another live process with the same transactional id. Like Kafka Streams,
the producer is renewed and the processor rejoins from its committed state; if fences
keep coming (`MAX_FENCES` within `FENCE_WINDOW_S`), another process really holds the
id, and this one stops rather than fence it back.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from pipeline.errors import RetryableError
from pipeline.kafka.config import ClientConfig

log = logging.getLogger(__name__)

_T = TypeVar("_T")
# Longer than the transaction timeout, after which the broker aborts the transaction
# anyway, and short enough that a wedged call costs seconds, not minutes.
_CALL_TIMEOUT_S = 10.0
# How much longer than its own timeout a call may take before it counts as wedged.
_WEDGED_AFTER_S = 5.0
_BACKOFF_S = (0.1, 0.2, 0.5, 1.0)
_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED})
MAX_FENCES = 3
FENCE_WINDOW_S = 60.0


class StillFenced(Exception):
    """Another live process holds this process's transactional id."""


class Stopping(BaseException):
    """The process was asked to stop while it waited for Kafka.

    A `BaseException` so that the loop's handlers of failed batches let it through."""


# Errors librdkafka does not flag retriable that only say Kafka is not answering (yet).
_UNAVAILABLE = frozenset(
    {
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._WAIT_COORD,
        KafkaError._RESOLVE,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


def is_unavailable(error: KafkaError) -> bool:
    """Kafka is away or moving leaders: the same call may go through later."""
    return not error.fatal() and (error.retriable() or error.code() in _UNAVAILABLE)


def is_fenced(error: KafkaError) -> bool:
    """Another producer with this transactional id took over: this one must stop."""
    return error.code() in _FENCED


_LOG_EVERY_S = 5.0


class _Caller:
    """One daemon thread that makes the producer's calls, in order. Not a
    `ThreadPoolExecutor`: the interpreter joins those at exit, and a wedged call left
    behind would then keep a stopped scheduler from exiting."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], Future[object]] | None] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._serve, name="transactions", daemon=True).start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, future = job
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)

    def submit(self, call: Callable[[], _T]) -> Future[_T]:
        future: Future[_T] = Future()
        self._jobs.put((call, future))  # type: ignore[arg-type]
        return future

    def shutdown(self) -> None:
        """The thread ends after its current call, if that ever returns."""
        self._jobs.put(None)


def retrying(what: str, call: Callable[[], _T], stop: threading.Event | None = None) -> _T:
    """`call()`, again after each retriable error, until it goes through or `stop` is
    set (`Stopping`); other errors propagate. Logged while it lasts, so that a wait on
    Kafka is never silent."""
    tries = 0
    first_failure = last_log = 0.0
    while True:
        if stop is not None and stop.is_set():
            raise Stopping(f"stopped while waiting for {what}")
        try:
            result = call()
        except KafkaException as exc:
            error = exc.args[0]
            if not is_unavailable(error):
                raise
            now = time.monotonic()
            first_failure = first_failure or now
            if now - last_log >= _LOG_EVERY_S:
                last_log = now
                log.warning(
                    "Kafka has not answered %s for %.1f s, retrying: %s",
                    what,
                    now - first_failure,
                    error,
                )
            backoff = _BACKOFF_S[min(tries, len(_BACKOFF_S) - 1)]
            if stop is None:
                time.sleep(backoff)
            else:
                stop.wait(backoff)
            tries += 1
            continue
        if first_failure:
            log.info("%s went through after %.1f s", what, time.monotonic() - first_failure)
        return result


class ProducerWedged(RetryableError):
    """A producer call outlived its own timeout; the producer was replaced by a new one."""


class Transactions:
    def __init__(
        self,
        config: ClientConfig,
        stop: threading.Event | None = None,
        new_producer: Callable[[ClientConfig], Producer] = Producer,
    ) -> None:
        self._config = config
        self._stop = stop
        self._make_producer = new_producer
        self._fences: list[float] = []
        self._calls = _Caller()
        # Producers whose call never returned, kept so that the call's thread never
        # runs on in a freed client.
        self.abandoned: list[Producer] = []
        self._open = False
        self.producer = self._new_producer()

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        """`call()`, waited for at most `_CALL_TIMEOUT_S + _WEDGED_AFTER_S`."""
        future = self._calls.submit(call)
        try:
            return future.result(_CALL_TIMEOUT_S + _WEDGED_AFTER_S)
        except FutureTimeout:
            log.error(
                "%s did not return within %.0f s though its timeout is %.0f s: abandoning "
                "the producer",
                what,
                _CALL_TIMEOUT_S + _WEDGED_AFTER_S,
                _CALL_TIMEOUT_S,
            )
            self._calls.shutdown()
            self._calls = _Caller()
            raise ProducerWedged(f"{what} wedged") from None

    def _abandon(self) -> None:
        self.abandoned.append(self.producer)
        self.renew()

    def _new_producer(self) -> Producer:
        while True:
            producer = self._make_producer(self._config)
            init = functools.partial(producer.init_transactions, _CALL_TIMEOUT_S)
            try:
                retrying(
                    "init_transactions",
                    functools.partial(self._call, "init_transactions", init),
                    self._stop,
                )
            except ProducerWedged:
                self.abandoned.append(producer)
                continue
            return producer

    def begin(self) -> None:
        self.producer.begin_transaction()
        self._open = True

    def commit(self, offsets: list[TopicPartition], group_metadata: object) -> None:
        """Raises `KafkaException` or `ProducerWedged` when the transaction did not
        commit: abort it then."""
        producer = self.producer
        try:
            if offsets:
                self._call(
                    "send_offsets_to_transaction",
                    lambda: producer.send_offsets_to_transaction(
                        offsets, group_metadata, _CALL_TIMEOUT_S
                    ),
                )
            self._call("commit_transaction", lambda: producer.commit_transaction(_CALL_TIMEOUT_S))
        except ProducerWedged:
            self._abandon()
            raise
        self._open = False

    def abort(self) -> None:
        """Abort the open transaction; a producer that cannot is replaced."""
        if not self._open:
            return  # the producer was replaced; the broker aborts what the old one left
        producer = self.producer
        try:
            self._call("abort_transaction", lambda: producer.abort_transaction(_CALL_TIMEOUT_S))
        except ProducerWedged:
            self._abandon()
            return
        except KafkaException as exc:
            error = exc.args[0]
            if is_fenced(error):
                self._count_fence(error)
            log.warning("transactional producer unusable (%s): starting a new one", error)
            self.renew()
        self._open = False

    def _count_fence(self, error: KafkaError) -> None:
        now = time.monotonic()
        self._fences = [t for t in self._fences if now - t < FENCE_WINDOW_S] + [now]
        if len(self._fences) > MAX_FENCES:
            raise StillFenced(
                f"fenced {len(self._fences)} times in {FENCE_WINDOW_S:.0f} s ({error}): another "
                f"process uses transactional id {self._config.get('transactional.id')!r}; "
                "give every scheduler its own PIPELINE_INSTANCE_ID"
            )

    def renew(self) -> None:
        """A new producer under the same transactional id; it fences the old one, whose
        open transaction the coordinator aborts."""
        old = self.producer
        old.purge()
        self._open = False
        self.producer = self._new_producer()

    def close(self, timeout_s: float) -> None:
        """Deliver what is queued; at shutdown a failure is logged, not raised, so that it
        cannot hide the error that stopped the loop."""
        try:
            self.producer.flush(timeout_s)
        except KafkaException as exc:
            log.warning("transactional producer closed with an error: %s", exc)
        finally:
            self._calls.shutdown()
