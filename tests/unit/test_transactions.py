"""Every wait of the scheduler's transactional producer is bounded by us and ends when
the process is asked to stop.

librdkafka's `send_offsets_to_transaction` can ignore its timeout for good after a
broker restart (librdkafka #5456, #5511; seen in `test_broker_outage`), which cannot be
provoked on demand against a real broker: these producers stand in for that bug.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.runtime.scheduler import transactions as module
from pipeline.runtime.scheduler.transactions import (
    ProducerWedged,
    Stopping,
    Transactions,
    retrying,
)


class _Producer:
    """Records calls; `wedge_offsets` makes `send_offsets_to_transaction` never return."""

    def __init__(self, wedge_offsets: bool, unavailable: bool = False) -> None:
        self.wedge_offsets = wedge_offsets
        self.unavailable = unavailable
        self.calls: list[str] = []
        self.released = threading.Event()

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init")
        if self.unavailable:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send_offsets_to_transaction(
        self, offsets: object, metadata: object, timeout: float
    ) -> None:
        self.calls.append("offsets")
        if self.wedge_offsets:
            self.released.wait()

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")

    def purge(self) -> None:
        self.calls.append("purge")

    def flush(self, timeout: float) -> int:
        return 0


@pytest.fixture
def short_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_CALL_TIMEOUT_S", 0.2)
    monkeypatch.setattr(module, "_WEDGED_AFTER_S", 0.2)


def test_a_commit_whose_call_never_returns_replaces_the_producer(short_bounds: None) -> None:
    made: list[_Producer] = []

    def new_producer(config: dict[str, object]) -> _Producer:
        made.append(_Producer(wedge_offsets=not made))
        return made[-1]

    transactions = Transactions({}, new_producer=new_producer)  # type: ignore[arg-type]
    transactions.begin()
    started = time.monotonic()
    with pytest.raises(ProducerWedged, match="send_offsets_to_transaction"):
        transactions.commit([TopicPartition("t", 0, 1)], object())
    assert time.monotonic() - started < 2
    wedged, fresh = made
    assert transactions.abandoned == [wedged]  # type: ignore[comparison-overlap]
    assert transactions.producer is fresh  # type: ignore[comparison-overlap]
    assert wedged.calls == ["init", "begin", "offsets", "purge"]
    assert fresh.calls == ["init"]

    transactions.abort()  # nothing open on the new producer: no call
    transactions.begin()
    transactions.commit([TopicPartition("t", 0, 1)], object())
    assert fresh.calls == ["init", "begin", "offsets", "commit"]
    wedged.released.set()
    transactions.close(1)


def test_a_stop_ends_the_wait_for_an_unreachable_broker(short_bounds: None) -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopping, match="init_transactions"):
        Transactions(
            {},
            stop,
            new_producer=lambda config: _Producer(False, unavailable=True),  # type: ignore[arg-type,return-value]
        )
    assert time.monotonic() - started < 2


def test_retrying_retries_unavailable_errors_and_raises_the_rest() -> None:
    answers: list[KafkaError] = [
        KafkaError(KafkaError._TRANSPORT),
        KafkaError(KafkaError._TIMED_OUT),
    ]

    def call() -> str:
        if answers:
            raise KafkaException(answers.pop(0))
        return "done"

    assert retrying("call", call) == "done"

    def refused() -> None:
        raise KafkaException(KafkaError(KafkaError.INVALID_CONFIG))

    with pytest.raises(KafkaException):
        retrying("refused", refused)


_EXITS_WITH_A_WEDGED_CALL = """
import threading
from confluent_kafka import TopicPartition
from pipeline.runtime.scheduler import transactions as module
from tests.unit.test_transactions import _Producer

module._CALL_TIMEOUT_S = module._WEDGED_AFTER_S = 0.1
made = []
def new(config):
    made.append(_Producer(wedge_offsets=not made))
    return made[-1]
tx = module.Transactions({}, new_producer=new)
tx.begin()
try:
    tx.commit([TopicPartition("t", 0, 1)], object())
except module.ProducerWedged:
    pass
tx.close(1)
print("closed")
"""


def test_a_process_whose_call_stays_wedged_still_exits() -> None:
    """A stopped scheduler must exit though an abandoned call never returns (the
    interpreter would join an executor's thread for ever)."""
    done = subprocess.run(
        [sys.executable, "-c", _EXITS_WITH_A_WEDGED_CALL],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "closed" in done.stdout
