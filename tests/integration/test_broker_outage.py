"""The scheduler rides out a broker that goes away while batches are in flight.

A broker of the test's own is stopped (SIGTERM, then kill -9) for longer than the
scheduler's transaction timeout while invocations keep arriving; the scheduler keeps
its PID, and every invocation completes exactly once after the broker is back.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pipeline import Context, Service
from pipeline.core.model import ResultStatus
from pipeline.localkafka.broker import BrokerConfig, LocalBroker
from tests.support.runtime import SchedulerProcess, register, running_worker, runtime_settings
from tests.support.topics import Outcomes
from topics.provision import provision

RATE = 30  # invocations per second
SECONDS = 30
OUTAGE_S = 12

service = Service("Outage")


@service.handler()
async def step(ctx: Context, value: int) -> int:
    return await ctx.run("double", lambda: value * 2)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_the_scheduler_rides_out_a_broker_outage(
    how: str, tmp_path: Path, topic_prefix: str
) -> None:
    port, controller = _free_ports(2)
    config = BrokerConfig(data_dir=tmp_path / "kafka", port=port, controller_port=controller)
    broker = LocalBroker(config)
    bootstrap = broker.start()
    settings = runtime_settings(bootstrap, topic_prefix)
    provision(bootstrap, settings.catalogue)
    register(settings, [service])
    scheduler = SchedulerProcess(settings, "outage", tmp_path / "scheduler.log")
    pid = scheduler.pid
    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 120_000})
    ids = [f"inv-{i}" for i in range(RATE * SECONDS)]
    stop_sending = threading.Event()

    def send() -> None:
        for i, invocation_id in enumerate(ids):
            if stop_sending.is_set():
                return
            value = {"target": "Outage/step", "input": i, "id": invocation_id}
            producer.produce(
                settings.topic_names.invocations,
                json.dumps(value).encode(),
                headers=[("content-type", b"application/json")],
            )
            producer.poll(0)
            time.sleep(1 / RATE)

    sender = threading.Thread(target=send, daemon=True)
    outcomes: Outcomes | None = None
    try:
        with running_worker(settings, [service]):
            sender.start()
            time.sleep(SECONDS / 3)
            if how == "sigkill":
                assert broker.pid is not None
                os.kill(broker.pid, signal.SIGKILL)
            broker.stop()
            time.sleep(OUTAGE_S)
            broker = LocalBroker(config)
            broker.start()
            sender.join(SECONDS * 2)
            assert producer.flush(60) == 0, "the test's own requests were not delivered"
            outcomes = reader = Outcomes(settings)
            try:
                outcomes.wait_until(
                    lambda: {r.invocation_id for r in reader.results()} >= set(ids),
                    120,
                    "a result for every invocation after the outage",
                )
            except AssertionError:
                scheduler.dump_stacks()  # into scheduler.log: what it waits for
                raise
            assert scheduler.alive and scheduler.pid == pid, "the scheduler did not ride it out"
        results = outcomes.results()
        counts = Counter(r.invocation_id for r in results)
        assert all(counts[i] == 1 for i in ids), {i: counts[i] for i in ids if counts[i] != 1}
        assert all(r.status is ResultStatus.COMPLETED for r in results)
    finally:
        stop_sending.set()
        if outcomes is not None:
            outcomes.close()
        scheduler.stop()
        broker.stop()
