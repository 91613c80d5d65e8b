"""Schedulers and workers as separate processes, started, killed and stopped the way an
operator would; and the checks every such test makes on what came out.

The processes run `tests.support.crash_service`, whose steps log every execution and
every result a handler saw to one file, so a test can prove that no step whose result
was seen ran again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.client import Client
from pipeline.codec.records import WireCodec
from pipeline.core.model import InvocationRequest, InvocationResult, ResultStatus
from pipeline.settings import Settings
from tests.support import crash_service
from tests.support.runtime import process_env, register

_COMMANDS = {
    "scheduler": ["scheduler"],
    "worker": ["worker", "--service", "tests.support.crash_service:service"],
    "admin-api": ["admin-api"],
}


class Fleet:
    """Named processes of either role; each has its own log file under `log_dir`."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        crash_log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._env = {**process_env(settings), "CRASH_LOG": str(crash_log), **(env or {})}
        self._log_dir = log_dir
        # Registered before any process starts: a scheduler that reads a request before
        # it has seen the worker's announcement fails it with HandlerNotFound.
        register(settings, [crash_service.service])
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._roles: dict[str, str] = {}

    def start(self, name: str, role: str, instance_id: str | None = None) -> None:
        """Start (or restart) process `name`; without `instance_id`, it is a dynamic
        member of its consumer group (joins and leaves rebalance at once)."""
        env = dict(self._env)
        if instance_id is not None:
            env["PIPELINE_INSTANCE_ID"] = instance_id
        command = [sys.executable, "-m", "pipeline.cli", *_COMMANDS[role]]
        with (self._log_dir / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self._roles[name] = role

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait()

    def terminate(self, name: str, timeout_s: float = 30.0) -> int:
        """SIGTERM, and the exit code once it stopped."""
        process = self.processes[name]
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout_s)

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.processes[name].send_signal(sig)

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def log(self, name: str) -> str:
        return (self._log_dir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        """Stop every process still running; kill those that do not stop in time."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class PacedSender:
    """Sends `requests` at about `rate` per second from a thread: a steady flow, so that
    kills and rebalances land while invocations run."""

    def __init__(self, client: Client, requests: list[InvocationRequest], rate: int) -> None:
        self._client = client
        self._requests = requests
        self._rate = rate
        self._thread = threading.Thread(target=self._send, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the requests were not all sent in time"

    def _send(self) -> None:
        chunk = max(1, self._rate // 10)
        for start in range(0, len(self._requests), chunk):
            self._client.send_requests(self._requests[start : start + chunk])
            time.sleep(0.1)


def read_results(
    settings: Settings,
    expected: set[str],
    timeout_s: float,
    quiet_s: float = 5.0,
    on_result: Callable[[InvocationResult], object] | None = None,
) -> list[InvocationResult]:
    """Every result on the results topic, read until all `expected` arrived and then
    `quiet_s` more (a duplicate would come after the last original), or `timeout_s`.
    `on_result` sees each result as it is read."""
    codec = WireCodec()
    consumer = Consumer(
        settings.cluster.client(
            {
                "group.id": f"{settings.topic_prefix}results-reader",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
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
                if on_result is not None:
                    on_result(result)
                continue
            if expected <= seen:
                quiet_until = quiet_until or time.monotonic() + quiet_s
                if time.monotonic() > quiet_until:
                    break
    finally:
        consumer.close()
    return results


def assert_once_each(results: Iterable[InvocationResult], expected: set[str]) -> None:
    """Exactly one result per expected invocation, all completed."""
    results = list(results)
    counts = Counter(r.invocation_id for r in results)
    missing = expected - set(counts)
    assert not missing, f"{len(missing)} invocations have no result, e.g. {sorted(missing)[:3]}"
    duplicated = {i: n for i, n in counts.items() if n > 1}
    assert not duplicated, (
        f"{len(duplicated)} invocations have several results, e.g. {sorted(duplicated.items())[:5]}"
    )
    failed = [r for r in results if r.status is not ResultStatus.COMPLETED]
    assert not failed, f"{len(failed)} failed, e.g. {failed[:3]}"


@dataclass(frozen=True)
class StepLog:
    """What `crash_service` handlers logged: step executions and results they saw."""

    executions: int
    re_executed: dict[tuple[str, str], int]

    @classmethod
    def read(cls, path: Path) -> StepLog:
        seen: set[tuple[str, str]] = set()
        re_executed: dict[tuple[str, str], int] = defaultdict(int)
        executions = 0
        for line in path.read_text().splitlines():
            kind, invocation_id, step, _token = line.split()
            if kind == "seen":
                seen.add((invocation_id, step))
            elif kind == "exec":
                executions += 1
                if (invocation_id, step) in seen:
                    re_executed[(invocation_id, step)] += 1
        return cls(executions, dict(re_executed))

    def assert_no_seen_step_ran_again(self) -> None:
        """A step may run twice only if its first run's result never reached the handler."""
        assert not self.re_executed, (
            f"{len(self.re_executed)} steps executed again after their result was seen, "
            f"e.g. {sorted(self.re_executed.items())[:5]}"
        )


def wait_for_new_steps(crash_log: Path, timeout_s: float) -> None:
    """Until the handlers log another step, or `timeout_s` passed (work may be done)."""
    size = crash_log.stat().st_size if crash_log.exists() else 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if crash_log.exists() and crash_log.stat().st_size > size:
            return
        time.sleep(0.02)


def wait_for_members(settings: Settings, role: str, members: int, timeout_s: float = 30) -> None:
    """Until the consumer group of `role` is stable with `members` members, each with
    partitions assigned."""
    group = settings.topic_names.group(role)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            description = admin.describe_consumer_groups([group])[group].result()
        except KafkaException:  # e.g. the coordinator is still loading
            time.sleep(0.2)
            continue
        assigned = [m for m in description.members if m.assignment.topic_partitions]
        if description.state is ConsumerGroupState.STABLE and len(assigned) == members:
            return
        time.sleep(0.2)
    raise AssertionError(f"group {group} did not settle with {members} members")


def attempt_starts(crash_log: Path) -> dict[str, list[tuple[int, float]]]:
    """Per invocation, the (pid, time) of each start of a `crash_service.hold` attempt."""
    starts: dict[str, list[tuple[int, float]]] = {}
    if not crash_log.exists():
        return starts
    for line in crash_log.read_text().splitlines():
        kind, invocation_id, pid, at = line.split()
        if kind == "start":
            starts.setdefault(invocation_id, []).append((int(pid), float(at)))
    return starts
