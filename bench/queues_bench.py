"""Many distinct waiting queues: scheduler memory and recovery time after kill -9.

    .venv/bin/python -m bench.queues_bench [--queues 100000]

Issue 3's target is 1,000,000 queues with one waiting invocation each: scheduler RSS
< 300 MB and recovery < 30 s. This puts N invocations in N distinct queues (limit key
`q{i}` of 1,000 scopes) under a `*` rule with `paused: true`, so that every one waits;
measures the scheduler's RSS once it has read them all; kills it -9; restarts it; and
measures the time until it answers again (a probe invocation in an unpaused scope gets
its result). Local RocksDB state survives the kill, so that restore reads only the
changelog's tail. Then it does the same once more with the local state deleted, as on
a new machine, where every partition is restored from the whole changelog.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from bench.harness import broker, fresh_settings, start_process
from bench.pipeline_bench import ResultWatcher
from pipeline.client import Client
from pipeline.codec.records import WireCodec
from pipeline.core.limits import LimitRule, RulePattern, RuleSet, put
from pipeline.kafka.config import ClusterConfig
from pipeline.runtime.limit_rules import LimitRuleWriter
from pipeline.runtime.worker import Worker
from pipeline.settings import Settings


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_until_consumed(settings: Settings, timeout_s: float) -> None:
    """Until the scheduler group's committed offsets reach the end of `invocations`."""
    topic = settings.topic_names.invocations
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": settings.topic_names.group("scheduler"),
            "enable.auto.commit": False,
        }
    )
    partitions = [TopicPartition(topic, p) for p in range(settings.runtime_partitions)]
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                committed = consumer.committed(partitions, timeout=10)
            except KafkaException as exc:  # e.g. the group coordinator is still loading
                print(f"retrying: {exc}", file=sys.stderr)
                time.sleep(1)
                continue
            ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
            if all(c.offset >= e for c, e in zip(committed, ends, strict=True)):
                return
            time.sleep(0.5)
    finally:
        consumer.close()
    raise TimeoutError(f"the scheduler did not consume every request in {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queues", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    report: dict[str, object] = {"queues": args.queues}
    with broker() as bootstrap:
        settings = fresh_settings(bootstrap, "queues", args.partitions)
        from bench.services import service

        asyncio.run(Worker(settings, [service]).register_services())
        rules = [
            LimitRule("hold-all", RulePattern.parse("*"), paused=True),
            LimitRule("probe", RulePattern.parse("probe/*")),
        ]
        writer = LimitRuleWriter(ClusterConfig(bootstrap), settings.topic_names.limits, WireCodec())
        writer.write(put(RuleSet(), rules, expected_version=0))
        writer.close()
        scheduler = start_process(settings, "queues-bench", "scheduler")
        worker = start_process(
            settings, "queues-bench", "worker", "--service", "bench.services:service"
        )
        try:
            with Client(settings) as client:
                started = time.perf_counter()
                batch = 10_000
                scope_t0: set[str] = set()
                for first in range(0, args.queues, batch):
                    requests = [
                        client.request("Bench/noop", i, scope=f"t{i % 1000}", limit_key=f"q{i}")
                        for i in range(first, min(first + batch, args.queues))
                    ]
                    scope_t0.update(r.id for r in requests if r.scope == "t0")
                    client.send_requests(requests)
                wait_until_consumed(settings, timeout_s=3_600)
                report["fill_seconds"] = round(time.perf_counter() - started, 1)
                report["scheduler_rss_mb"] = round(rss_mb(scheduler.pid), 1)

                scheduler.send_signal(signal.SIGKILL)
                scheduler.wait()
                restarted = time.perf_counter()
                scheduler = start_process(settings, "queues-bench", "scheduler")
                client.call("Bench/noop", 1, scope="probe", timeout_s=600)
                report["recovery_seconds"] = round(time.perf_counter() - restarted, 1)
                report["scheduler_rss_after_recovery_mb"] = round(rss_mb(scheduler.pid), 1)

                # A rule change for one scope among a million queues: only that scope's
                # queues are looked at again, so its work starts at once.
                watcher = ResultWatcher(settings)
                watcher.start()
                changed = time.perf_counter()
                unpause_t0 = LimitRule("t0", RulePattern.parse("t0/*"))
                writer = LimitRuleWriter(
                    ClusterConfig(bootstrap), settings.topic_names.limits, WireCodec()
                )
                writer.write(put(RuleSet(1, tuple(rules)), [unpause_t0], expected_version=1))
                writer.close()
                last = watcher.wait_for(scope_t0, timeout_s=600)
                watcher.stop()
                report["scope_rule_change_to_last_of_its_queues_done_s"] = round(last - changed, 2)
                report["queues_in_that_scope"] = len(scope_t0)

                # A new machine: no local RocksDB, so the whole changelog is read again.
                scheduler.send_signal(signal.SIGKILL)
                scheduler.wait()
                shutil.rmtree(
                    Path(os.environ["PIPELINE_STATE_DIR"])
                    / "scheduler"
                    / settings.topic_names.group("scheduler")
                    / "queues-bench"
                )
                restarted = time.perf_counter()
                scheduler = start_process(settings, "queues-bench", "scheduler")
                client.call("Bench/noop", 2, scope="probe", timeout_s=1_800)
                report["recovery_without_local_state_seconds"] = round(
                    time.perf_counter() - restarted, 1
                )
                report["scheduler_rss_after_full_restore_mb"] = round(rss_mb(scheduler.pid), 1)
        finally:
            for process in (scheduler, worker):
                process.terminate()
            for process in (scheduler, worker):
                process.wait(30)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
