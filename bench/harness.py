"""What every benchmark sets up: fresh topics, and runtime processes as in production."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pipeline.localkafka.broker import BrokerConfig, LocalBroker
from pipeline.settings import Settings
from topics.provision import provision


@contextmanager
def broker() -> Iterator[str]:
    """A broker for one benchmark run; schedulers keep their RocksDB state beside it."""
    with tempfile.TemporaryDirectory() as state_dir:
        os.environ.setdefault("PIPELINE_STATE_DIR", state_dir)
        with _broker() as bootstrap:
            yield bootstrap


@contextmanager
def _broker() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory() as data_dir:
        local = LocalBroker(BrokerConfig(data_dir=Path(data_dir)))
        bootstrap = local.start()
        try:
            yield bootstrap
        finally:
            local.stop()


def fresh_settings(bootstrap: str, name: str, partitions: int) -> Settings:
    """Settings under a new topic prefix, with its topics created."""
    settings = Settings(
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=f"{name}{uuid.uuid4().hex[:6]}.",
        runtime_partitions=partitions,
        results_partitions=partitions,
    )
    provision(bootstrap, settings.catalogue)
    return settings


def start_process(settings: Settings, instance: str, *command: str) -> subprocess.Popen[bytes]:
    """`pipeline <command>` in its own process, configured like `settings`. Its output
    goes to `$BENCH_LOG_DIR/<instance>-<command>.log` when that is set."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PIPELINE_TOPIC_PREFIX": settings.topic_prefix,
        "PIPELINE_RUNTIME_PARTITIONS": str(settings.runtime_partitions),
        "PIPELINE_RESULTS_PARTITIONS": str(settings.results_partitions),
        "PIPELINE_INSTANCE_ID": instance,
    }
    log_dir = os.environ.get("BENCH_LOG_DIR")
    if log_dir is None:
        output: int | IO[bytes] = subprocess.DEVNULL
    else:
        output = (Path(log_dir) / f"{instance}-{command[0]}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *command],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
    )


def start_runtime(settings: Settings, instance: str) -> list[subprocess.Popen[bytes]]:
    """A scheduler and a worker running `bench.services`."""
    return [
        start_process(settings, instance, "scheduler"),
        start_process(settings, instance, "worker", "--service", "bench.services:service"),
    ]


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far (Linux /proc): by the Kafka JVMs, by `pipeline` processes,
    and by the whole machine; deltas over a run say who had the cores."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {"brokers": 0.0, "pipeline": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended meanwhile
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        if b"kafka.Kafka" in cmdline:
            used["brokers"] += seconds
        elif b"pipeline.cli" in cmdline or b"bin/pipeline" in cmdline:
            used["pipeline"] += seconds
    with open("/proc/stat") as stat:
        jiffies = [int(x) for x in stat.readline().split()[1:]]
    idle = jiffies[3] + jiffies[4]  # idle + iowait
    used["machine"] = (sum(jiffies[:8]) - idle) / tick
    return used
