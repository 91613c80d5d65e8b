"""Run the real scheduler and worker inside the test process, on the real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Producer

from pipeline.codec.records import WireCodec
from pipeline.runtime.scheduler import SchedulerProcessor
from pipeline.runtime.worker import Worker
from pipeline.sdk import Service
from pipeline.settings import Settings
from topics.provision import provision


def process_env(settings: Settings) -> dict[str, str]:
    """The environment of a `pipeline` process configured like `settings`, the cluster's
    properties (credentials included) among it: its properties file, or its properties
    as PIPELINE_KAFKA_* variables."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PIPELINE_TOPIC_PREFIX": settings.topic_prefix,
        "PIPELINE_RUNTIME_PARTITIONS": str(settings.runtime_partitions),
        "PIPELINE_RESULTS_PARTITIONS": str(settings.results_partitions),
        "PIPELINE_LEASE_TIMEOUT_MS": str(settings.lease_timeout_ms),
    }
    if settings.kafka_properties_file is not None:
        # The file is the source: the process reads it as the user's would.
        env["PIPELINE_KAFKA_PROPERTIES_FILE"] = str(settings.kafka_properties_file)
        return env
    for name, value in settings.kafka_properties.items():
        env["PIPELINE_KAFKA_" + name.upper().replace(".", "_")] = value.get_secret_value()
    return env


def runtime_settings(bootstrap: str, prefix: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "kafka_bootstrap_servers": bootstrap,
        "topic_prefix": prefix,
        "runtime_partitions": 4,
        "results_partitions": 4,
        "lease_timeout_ms": 5_000,
        "instance_id": prefix,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@contextmanager
def running_worker(
    settings: Settings, services: Sequence[Service], **kwargs: object
) -> Iterator[Worker]:
    worker = Worker(settings, services, **kwargs)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(worker.run(stop))
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
    if errors:
        raise errors[0]


@contextmanager
def running_scheduler(settings: Settings) -> Iterator[SchedulerProcessor]:
    processor = SchedulerProcessor(settings)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            processor.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-scheduler", daemon=True)
    thread.start()
    try:
        yield processor
    finally:
        stop.set()
        thread.join(30)
    if errors:
        raise errors[0]


def register(settings: Settings, services: Sequence[Service]) -> None:
    """Announce the services before anything runs, as a deployment step would."""
    codec = WireCodec()
    producer = Producer(settings.cluster.client({}))
    for service in services:
        definition = service.definition()
        producer.produce(
            settings.topic_names.services,
            codec.encode_service(definition),
            definition.name.encode(),
        )
    assert producer.flush(30) == 0


@contextmanager
def running_pipeline(settings: Settings, services: Sequence[Service]) -> Iterator[None]:
    provision(settings.kafka_bootstrap_servers, settings.catalogue)
    register(settings, services)
    with running_worker(settings, services), running_scheduler(settings):
        yield


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`pipeline <args>` in a subprocess, configured like `settings`."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=process_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class SchedulerProcess:
    """`pipeline scheduler` in a subprocess, configured like `settings`, to kill -9."""

    def __init__(self, settings: Settings, instance_id: str, log_path: Path) -> None:
        self._env = {**process_env(settings), "PIPELINE_INSTANCE_ID": instance_id}
        self._log = log_path.open("ab")
        self._process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "pipeline.cli", "scheduler"]
        return subprocess.Popen(command, env=self._env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def kill_and_restart(self) -> None:
        self._process.send_signal(signal.SIGKILL)
        self._process.wait()
        self._process = self._start()

    def dump_stacks(self) -> None:
        """Have the process print its threads' stacks to its log (a test about to fail)."""
        if self.alive:
            self._process.send_signal(signal.SIGUSR1)
            time.sleep(1)

    def stop(self) -> None:
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            # Leave no process behind; its log says why it did not stop.
            self.dump_stacks()
            self._process.kill()
            self._process.wait()
            raise
        finally:
            self._log.close()


@contextmanager
def scheduler_process(
    settings: Settings, instance_id: str, log_path: Path
) -> Iterator[SchedulerProcess]:
    process = SchedulerProcess(settings, instance_id, log_path)
    try:
        yield process
    finally:
        process.stop()
