"""What flow control costs, measured in one run on one machine.

    .venv/bin/python -m bench.flow_bench [--invocations 20000] [--keys 1000]

Runs the same fire-and-forget load twice on one broker and one scheduler/worker pair:
without any limit rule, then with every invocation in a scoped queue (`--keys` limit
keys) under a rule that never binds (`acme/*`: concurrency 100000, rate 1e6/s, burst
1e6), so that every admission check runs. Prints throughput for both and their ratio.
Then sends invocations one at a time, alternating an unscoped one (no rule governs its
queue) and a scoped one under the rule, and prints the dispatch delay (the dispatch
record's time minus the request's creation time, both on this machine's clock) p50/p99
of each, and what the admission check adds at p50.

Then the scoped load again with a budget on the scope as a whole that never binds
(`acme`: concurrency 100000, or `--scope-concurrency`), so that every start goes
through the fair-share pass over the scope's waiting queues. Last, the scoped load and
single sends once more with a cap on the `Bench` deployment that never binds either
(100000 running), so that every invocation awaits a unit and is granted one: what the
deployment cap's counting costs (here within one scheduler process, where it needs no
extra round trip through Kafka).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from bench.harness import broker, fresh_settings, start_runtime
from bench.pipeline_bench import ResultWatcher
from pipeline.client import Client
from pipeline.codec.records import WireCodec
from pipeline.core.deployment import DeploymentLimit
from pipeline.core.limits import LimitRule, RulePattern, RuleSet, put, put_deployment_limit
from pipeline.core.model import InvocationRequest
from pipeline.kafka.config import ClusterConfig
from pipeline.runtime.limit_rules import LimitRuleWriter
from pipeline.settings import Settings


def dispatch_delays_ms(settings: Settings, ids: set[str]) -> list[float]:
    """Dispatch CreateTime minus the request's created_at_ms, for the given invocations."""
    codec = WireCodec()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"flow-bench-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    topic = settings.topic_names.dispatch
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.runtime_partitions)])
    delays: list[float] = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 3:
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        idle_since = time.monotonic()
        order = codec.decode_dispatch(message.value() or b"")
        if order.request.id in ids:
            delays.append(message.timestamp()[1] - order.request.created_at_ms)
    consumer.close()
    return delays


def run_load(client: Client, watcher: ResultWatcher, requests: list[InvocationRequest]) -> float:
    started = time.perf_counter()
    client.send_requests(requests)
    last = watcher.wait_for({r.id for r in requests}, 600)
    return len(requests) / (last - started)


def scoped(client: Client, count: int, keys: int) -> list[InvocationRequest]:
    return [
        client.request("Bench/noop", i, scope="acme", limit_key=f"user-{i % keys}")
        for i in range(count)
    ]


def send_singly(
    client: Client,
    watcher: ResultWatcher,
    into: dict[str, list[InvocationRequest]],
    kinds: tuple[str, ...],
    samples: int,
) -> None:
    """One at a time, alternating `kinds`: "off" is unscoped, the others scoped."""
    for i in range(samples):
        for name in kinds:
            scope = None if name == "off" else "acme"
            request = client.request("Bench/noop", i, scope=scope, limit_key=scope and f"u{i}")
            client.send_requests([request])
            watcher.wait_for({request.id}, 30)
            into[name].append(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--invocations", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument(
        "--scope-concurrency",
        type=int,
        default=100_000,
        help="the scope budget's concurrency; the default never binds",
    )
    args = parser.parse_args()
    report: dict[str, object] = {"machine": f"{os.cpu_count()} cores"}
    with broker() as bootstrap:
        settings = fresh_settings(bootstrap, "flow", args.partitions)
        processes = start_runtime(settings, "flow-bench")
        watcher = ResultWatcher(settings)
        watcher.start()
        try:
            with Client(settings) as client:
                warm = client.request("Bench/noop", 0)
                client.send_requests([warm])
                watcher.wait_for({warm.id}, 60)

                plain = [client.request("Bench/noop", i) for i in range(args.invocations)]
                off = run_load(client, watcher, plain)

                rule = LimitRule(
                    "never-binds",
                    RulePattern.parse("acme/*"),
                    concurrency=100_000,
                    rate_per_s=1e6,
                    burst=1_000_000,
                )
                writer = LimitRuleWriter(
                    ClusterConfig(bootstrap), settings.topic_names.limits, WireCodec()
                )
                writer.write(put(RuleSet(), [rule], expected_version=0))
                writer.close()
                time.sleep(2)  # the scheduler polls the rules between batches
                on = run_load(client, watcher, scoped(client, args.invocations, args.keys))
                # One at a time: what the admission check adds to a dispatch when the
                # queue is under its limits, without any backlog in front of it.
                single: dict[str, list[InvocationRequest]] = {
                    "off": [],
                    "on": [],
                    "budget": [],
                    "capped": [],
                }
                send_singly(client, watcher, single, ("off", "on"), args.latency_samples)

                # The scope's shared budget, never binding either: every start now goes
                # through the fair-share pass over the scope's waiting queues.
                budget = LimitRule(
                    "acme-total", RulePattern.parse("acme"), concurrency=args.scope_concurrency
                )
                with_budget = put(put(RuleSet(), [rule], expected_version=0), [budget], 1)
                writer = LimitRuleWriter(
                    ClusterConfig(bootstrap), settings.topic_names.limits, WireCodec()
                )
                writer.write(with_budget)
                time.sleep(2)
                budgeted = run_load(client, watcher, scoped(client, args.invocations, args.keys))
                send_singly(client, watcher, single, ("budget",), args.latency_samples)

                capped_rules = put_deployment_limit(
                    with_budget, DeploymentLimit("Bench", 100_000), expected_version=2
                )
                writer.write(capped_rules)
                writer.close()
                time.sleep(2)
                with_cap = run_load(client, watcher, scoped(client, args.invocations, args.keys))
                send_singly(client, watcher, single, ("capped",), args.latency_samples)
            report["throughput_limits_off_per_s"] = round(off)
            report["throughput_limits_on_per_s"] = round(on)
            report["ratio_on_to_off"] = round(on / off, 3)
            report["throughput_limits_and_scope_budget_per_s"] = round(budgeted)
            report["ratio_scope_budget_to_off"] = round(budgeted / off, 3)
            report["throughput_limits_budget_and_deployment_cap_per_s"] = round(with_cap)
            report["ratio_capped_to_off"] = round(with_cap / off, 3)
            for name, requests in single.items():
                delays = sorted(dispatch_delays_ms(settings, {r.id for r in requests}))
                report[f"dispatch_delay_c1_{name}_p50_ms"] = statistics.median(delays)
                report[f"dispatch_delay_c1_{name}_p99_ms"] = delays[int(len(delays) * 0.99) - 1]
            report["dispatch_delay_added_p50_ms"] = (
                report["dispatch_delay_c1_on_p50_ms"]  # type: ignore[operator]
                - report["dispatch_delay_c1_off_p50_ms"]
            )
            report["dispatch_delay_added_by_cap_p50_ms"] = (
                report["dispatch_delay_c1_capped_p50_ms"]  # type: ignore[operator]
                - report["dispatch_delay_c1_budget_p50_ms"]
            )
        finally:
            watcher.stop()
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
