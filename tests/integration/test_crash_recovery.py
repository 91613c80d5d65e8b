"""kill -9 the scheduler and the worker while 2,000 invocations flow; then prove
exactly one result per invocation and no re-execution of a step whose result a
handler had already received."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from pipeline.client import Client
from pipeline.codec.records import WireCodec
from pipeline.core.model import InvocationRequest, InvocationResult, ResultStatus
from tests.support.runtime import runtime_settings
from topics.provision import provision

INVOCATIONS = 2_000
RATE = 250  # invocations per second
KILLS = 6


def test_kill_9_loses_nothing_and_duplicates_nothing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = runtime_settings(kafka_bootstrap, topic_prefix, lease_timeout_ms=5_000)
    provision(kafka_bootstrap, settings.catalogue)
    crash_log = tmp_path / "steps.log"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PIPELINE_TOPIC_PREFIX": topic_prefix,
        "PIPELINE_RUNTIME_PARTITIONS": "4",
        "PIPELINE_RESULTS_PARTITIONS": "4",
        "PIPELINE_LEASE_TIMEOUT_MS": "5000",
        "PIPELINE_INSTANCE_ID": "crash",
        "CRASH_LOG": str(crash_log),
    }
    commands = {
        "scheduler": [sys.executable, "-m", "pipeline.cli", "scheduler"],
        "worker": [
            sys.executable,
            "-m",
            "pipeline.cli",
            "worker",
            "--service",
            "tests.support.crash_service:service",
        ],
    }
    logs = {name: (tmp_path / f"{name}.log").open("ab") for name in commands}

    def start(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            commands[name], env=env, stdout=logs[name], stderr=subprocess.STDOUT
        )

    processes = {name: start(name) for name in commands}
    rng = random.Random(7)
    try:
        client = Client(settings)
        requests = [client.request("Crash/work", i) for i in range(INVOCATIONS)]
        sender = threading.Thread(target=_send_paced, args=(client, requests), daemon=True)
        sender.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 2.5))
            # Kill while steps are being executed, not while the restarted processes are
            # still joining their groups: otherwise a run can miss all work in flight.
            _wait_for_new_steps(crash_log, timeout_s=10)
            victims = rng.choice([["scheduler"], ["worker"], ["scheduler", "worker"]])
            for name in victims:
                processes[name].send_signal(signal.SIGKILL)
                processes[name].wait()
            time.sleep(rng.uniform(0.0, 0.5))
            for name in victims:
                processes[name] = start(name)
        sender.join(60)
        client.close()
        results = _read_results(settings, {r.id for r in requests}, timeout_s=240)
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        for handle in logs.values():
            handle.close()

    counts = Counter(r.invocation_id for r in results)
    missing = {r.id for r in requests} - set(counts)
    assert not missing, f"{len(missing)} invocations have no result, e.g. {sorted(missing)[:3]}"
    duplicated = {i: n for i, n in counts.items() if n > 1}
    assert not duplicated, (
        f"{len(duplicated)} invocations have several results, e.g. {sorted(duplicated.items())[:5]}"
    )
    failed = [r for r in results if r.status is not ResultStatus.COMPLETED]
    assert not failed, f"{len(failed)} failed, e.g. {failed[:3]}"
    # The kills hit work in flight: some invocations needed a second attempt.
    retried = sum(1 for r in results if r.attempts > 1)
    print(f"{retried} of {INVOCATIONS} invocations needed more than one attempt")
    assert retried > 0

    # A step may run twice only if its first run's result never reached the handler.
    seen: set[tuple[str, str]] = set()
    re_executed: dict[tuple[str, str], int] = defaultdict(int)
    executions = 0
    for line in crash_log.read_text().splitlines():
        kind, invocation_id, step, _token = line.split()
        if kind == "seen":
            seen.add((invocation_id, step))
        else:
            executions += 1
            if (invocation_id, step) in seen:
                re_executed[(invocation_id, step)] += 1
    assert not re_executed, (
        f"{len(re_executed)} steps executed again after their result was seen, e.g. "
        f"{sorted(re_executed.items())[:5]}"
    )
    assert executions >= 3 * INVOCATIONS
    print(f"{executions - 3 * INVOCATIONS} step executions repeated (results never seen)")


def _send_paced(client: Client, requests: list[InvocationRequest]) -> None:
    """A steady flow rather than one burst, so the kills land while invocations run."""
    for start in range(0, len(requests), RATE // 10):
        client.send_requests(requests[start : start + RATE // 10])
        time.sleep(0.1)


def _read_results(settings: object, expected: set[str], timeout_s: float) -> list[InvocationResult]:
    from pipeline.settings import Settings

    assert isinstance(settings, Settings)
    codec = WireCodec()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": "crash-test-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    topic = settings.topic_names.results
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.results_partitions)])
    results: list[InvocationResult] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    quiet_until: float | None = None
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                result = codec.decode_result(message.value() or b"")
                results.append(result)
                seen.add(result.invocation_id)
                continue
            if expected <= seen:
                # Keep reading a while: a duplicate would arrive after the last original.
                quiet_until = quiet_until or time.monotonic() + 5
                if time.monotonic() > quiet_until:
                    break
    finally:
        consumer.close()
    return results


def _wait_for_new_steps(crash_log: Path, timeout_s: float) -> None:
    """Until the handlers log another step, or `timeout_s` passed (work may be done)."""
    size = crash_log.stat().st_size if crash_log.exists() else 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if crash_log.exists() and crash_log.stat().st_size > size:
            return
        time.sleep(0.02)
