"""Scaling out and failing over.

    .venv/bin/python -m bench.failover_bench scale [--invocations 20000 --partitions 6]
    .venv/bin/python -m bench.failover_bench takeover [--waiting 10000,100000,1000000]
    .venv/bin/python -m bench.failover_bench worker-retry [--attempts 200]

`scale`: on a local 3-broker cluster (replication factor 3, min.insync.replicas 2),
N invocations of a no-op handler sent at once, completed per second, with 1 and then 2
instances (a scheduler and a worker each, one process per role).

`takeover`: two scheduler instances hold `W` waiting invocations (a paused `*` rule
keeps them queued); one is killed -9; the time until every partition it held answers
a probe (an invocation in an unpaused scope), with the survivor's standby copies
(default) and without them (a restore of the whole changelog).

`worker-retry`: attempts running on a worker that is killed -9; the time until each
runs again on the surviving worker (default heartbeat timeout, 3 s sessions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.harness import broker, cpu_seconds, start_process
from bench.pipeline_bench import ResultWatcher
from bench.queues_bench import wait_until_consumed
from bench.services import service
from pipeline.client import Client
from pipeline.codec.records import WireCodec
from pipeline.core.limits import LimitRule, RulePattern, RuleSet, put
from pipeline.core.partitioning import partition_for
from pipeline.kafka.config import ClusterConfig
from pipeline.localkafka.cluster import LocalCluster, LocalClusterConfig
from pipeline.runtime.limit_rules import LimitRuleWriter
from pipeline.runtime.worker import Worker
from pipeline.settings import Settings
from topics.provision import provision


@contextmanager
def cluster() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as data_dir:
        local = LocalCluster(LocalClusterConfig(data_dir=Path(data_dir)))
        bootstrap = local.start()
        try:
            yield bootstrap
        finally:
            local.stop()


def settings_for(bootstrap: str, name: str, partitions: int, replication: int) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=f"{name}{os.urandom(3).hex()}.",
        runtime_partitions=partitions,
        results_partitions=partitions,
        replication_factor=replication,
    )
    provision(bootstrap, settings.catalogue)
    asyncio.run(Worker(settings, [service]).register_services())
    return settings


def _start(
    settings: Settings, instance: str, role: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    os.environ.update(env or {})
    if role == "scheduler":
        return start_process(settings, instance, "scheduler")
    return start_process(settings, instance, "worker", "--service", "bench.services:service")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def scale(args: argparse.Namespace) -> dict[str, object]:
    report: dict[str, object] = {}
    with cluster() as bootstrap:
        for instances in (1, 2):
            settings = settings_for(bootstrap, f"scale{instances}", args.partitions, 3)
            processes = [
                _start(settings, f"i{i}", role)
                for i in range(instances)
                for role in ("scheduler", "worker")
            ]
            try:
                with Client(settings) as client:
                    # Warm up: every process joined its group and serves its partitions.
                    client.call("Bench/noop", 0, timeout_s=120)
                    time.sleep(5)
                    watcher = ResultWatcher(settings)
                    watcher.start()
                    requests = [client.request("Bench/noop", i) for i in range(args.invocations)]
                    cpu_before = cpu_seconds()
                    started = time.perf_counter()
                    client.send_requests(requests)
                    last = watcher.wait_for({r.id for r in requests}, timeout_s=600)
                    cpu_after = cpu_seconds()
                    watcher.stop()
                    elapsed = last - started
                    report[f"{instances}_instances_inv_per_s"] = round(args.invocations / elapsed)
                    # Who had the cores: busy fraction of the machine, and the CPU
                    # seconds per second of the brokers and the pipeline processes.
                    report[f"{instances}_instances_cpu"] = {
                        kind: round((cpu_after[kind] - cpu_before[kind]) / elapsed, 2)
                        for kind in cpu_after
                    } | {"cores": os.cpu_count()}
            finally:
                _stop(processes)
    one, two = report["1_instances_inv_per_s"], report["2_instances_inv_per_s"]
    assert isinstance(one, int) and isinstance(two, int)
    report["ratio"] = round(two / one, 2)
    return report


def takeover(args: argparse.Namespace) -> dict[str, object]:
    report: dict[str, object] = {}
    for waiting in (int(w) for w in args.waiting.split(",")):
        for standby in {"both": (True, False), "on": (True,), "off": (False,)}[args.standby]:
            with broker() as bootstrap:
                seconds = _takeover_once(bootstrap, waiting, standby, args.partitions)
            report[f"{waiting}_waiting_{'standby' if standby else 'no_standby'}_s"] = seconds
            print(json.dumps(report), file=sys.stderr)
    return report


def _takeover_once(bootstrap: str, waiting: int, standby: bool, partitions: int) -> float:
    settings = settings_for(bootstrap, "takeover", partitions, 1)
    # One probe scope per partition, each under a rule of its own that does not hold it.
    probe_scopes = _scope_per_partition(partitions)
    rules = [
        LimitRule("hold-all", RulePattern.parse("*"), paused=True),
        *(LimitRule(f"probe-{s}", RulePattern.parse(f"{s}/*")) for s in probe_scopes),
    ]
    writer = LimitRuleWriter(ClusterConfig(bootstrap), settings.topic_names.limits, WireCodec())
    writer.write(put(RuleSet(), rules, expected_version=0))
    writer.close()
    env = {"PIPELINE_STANDBY_COPIES": "true" if standby else "false"}
    one = _start(settings, "one", "scheduler", env)
    two = _start(settings, "two", "scheduler", env)
    worker = _start(settings, "w", "worker", env)
    try:
        with Client(settings) as client:
            client.call("Bench/noop", 0, scope=probe_scopes[0], timeout_s=120)
            batch = 10_000
            for first in range(0, waiting, batch):
                client.send_requests(
                    [
                        client.request("Bench/noop", i, scope=f"t{i % 1000}", limit_key=f"q{i}")
                        for i in range(first, min(first + batch, waiting))
                    ]
                )
            wait_until_consumed(settings, timeout_s=3_600)
            # The standby copies catch up with the changelog between the survivor's
            # batches, ~20,000 records a loop while idle: a kill right after a burst of
            # a million finds them ~200,000 records behind per partition, which the
            # takeover then reads (~30,000 a second). This measures caught-up copies.
            time.sleep(5 + waiting / 20_000)
            one.send_signal(signal.SIGKILL)
            one.wait()
            killed = time.perf_counter()
            probes = [client.request("Bench/noop", 1, scope=s) for s in probe_scopes]
            watcher = ResultWatcher(settings)
            watcher.start()
            client.send_requests(probes)
            last = watcher.wait_for({r.id for r in probes}, timeout_s=1_800)
            watcher.stop()
            return round(last - killed, 1)
    finally:
        _stop([one, two, worker])


def _scope_per_partition(partitions: int) -> list[str]:
    chosen: dict[int, str] = {}
    n = 0
    while len(chosen) < partitions:
        chosen.setdefault(partition_for(f"probe{n}", partitions), f"probe{n}")
        n += 1
    return [chosen[p] for p in range(partitions)]


def worker_retry(args: argparse.Namespace) -> dict[str, object]:
    from tests.support.fleet import Fleet, attempt_starts, read_results, wait_for_members

    with broker() as bootstrap, tempfile.TemporaryDirectory() as logs:
        settings = Settings(
            kafka_bootstrap_servers=bootstrap,
            topic_prefix=f"retry{os.urandom(3).hex()}.",
            runtime_partitions=args.partitions,
            results_partitions=args.partitions,
        )
        provision(bootstrap, settings.catalogue)
        crash_log = Path(logs) / "steps.log"
        fleet = Fleet(settings, Path(logs), crash_log)
        fleet.start("scheduler", "scheduler", "bench")
        fleet.start("victim", "worker")
        fleet.start("survivor", "worker")
        try:
            wait_for_members(settings, "workers", 2)
            with Client(settings) as client:
                requests = [client.request("Crash/hold", 6.0) for _ in range(args.attempts)]
                client.send_requests(requests)
                expected = {r.id for r in requests}
                deadline = time.monotonic() + 60
                while (
                    len(attempt_starts(crash_log)) < len(expected) and time.monotonic() < deadline
                ):
                    time.sleep(0.1)
                victim = fleet.pid("victim")
                fleet.kill("victim")
                killed = time.time()
                read_results(settings, expected, timeout_s=120, quiet_s=1)
        finally:
            fleet.stop_all()
        starts = attempt_starts(crash_log)
        delays = sorted(
            min(t for pid, t in runs if pid != victim and t > killed) - killed
            for runs in starts.values()
            if any(pid == victim for pid, _ in runs)
        )
    return {
        "attempts_on_killed_worker": len(delays),
        "retry_p50_s": round(statistics.median(delays), 2),
        "retry_p99_s": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))], 2),
        "retry_max_s": round(delays[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["scale", "takeover", "worker-retry"])
    parser.add_argument("--invocations", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--waiting", default="10000,100000,1000000")
    parser.add_argument("--attempts", type=int, default=200)
    parser.add_argument(
        "--standby", choices=["both", "on", "off"], default="both", help="takeover: copies"
    )
    args = parser.parse_args()
    runs = {"scale": scale, "takeover": takeover, "worker-retry": worker_retry}
    report = {
        "mode": args.mode,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        **runs[args.mode](args),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
