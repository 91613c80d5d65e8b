"""End-to-end benchmarks of the foundation, all in one run on one machine.

    .venv/bin/python -m bench.pipeline_bench [--invocations 20000] [--latency-samples 500]

Starts its own broker (or uses $KAFKA_BOOTSTRAP_SERVERS), runs the scheduler and the
worker as separate processes as in production, and prints one JSON object with:

- raw Kafka ceiling: confluent-kafka consume -> produce passthrough, messages/s;
- fire-and-forget: N no-op invocations, completed/s end to end, and ratio to ceiling;
- latency at concurrency 1: p50/p99 ms from produce to result;
- ten `ctx.run` steps per invocation: steps/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.harness import broker, fresh_settings, start_runtime
from pipeline.client import Client
from pipeline.codec.records import WireCodec
from pipeline.settings import Settings


def raw_ceiling(bootstrap: str, messages: int) -> float:
    """Messages/s of a plain consume -> produce loop, the bound for any Kafka processor."""
    source, sink = f"bench-{uuid.uuid4().hex[:6]}-in", f"bench-{uuid.uuid4().hex[:6]}-out"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, 4, 1) for t in (source, sink)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    payload = b"x" * 100
    for i in range(messages):
        while True:
            try:
                producer.produce(source, payload, str(i).encode())
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([source])
    out = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    copied = 0
    started: float | None = None
    while copied < messages:
        batch = consumer.consume(5_000, timeout=0.5)
        if batch and started is None:
            started = time.perf_counter()
        for message in batch:
            if message.error() is not None:
                continue
            while True:
                try:
                    out.produce(sink, message.value(), message.key())
                    break
                except BufferError:
                    out.poll(0.01)
            copied += 1
        out.poll(0)
    out.flush(60)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return messages / elapsed


class ResultWatcher:
    """Tails every results partition and notes when each invocation's result arrived."""

    def __init__(self, settings: Settings) -> None:
        self._codec = WireCodec()
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "group.id": "bench-results",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
            }
        )
        topic = settings.topic_names.results
        self._consumer.assign(
            [TopicPartition(topic, p, -1) for p in range(settings.results_partitions)]
        )
        self.arrived: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cond = threading.Condition()

    def start(self) -> None:
        self._thread.start()
        time.sleep(1.0)  # let the assignment resolve OFFSET_END before anything is sent

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.05)
            if message is None or message.error() is not None:
                continue
            now = time.perf_counter()
            key = (message.key() or b"").decode()
            with self._cond:
                self.arrived[key] = now
                self._cond.notify_all()

    def wait_for(self, ids: set[str], timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not ids <= self.arrived.keys():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = len(ids - self.arrived.keys())
                    raise TimeoutError(f"{missing} results missing after {timeout_s} s")
                self._cond.wait(remaining)
            return max(self.arrived[i] for i in ids)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def run_bench(args: argparse.Namespace) -> dict[str, object]:
    report: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
    }
    with broker() as bootstrap:
        report["raw_passthrough_msgs_per_s"] = round(raw_ceiling(bootstrap, args.raw_messages))
        settings = fresh_settings(bootstrap, "bench", args.partitions)
        processes = start_runtime(settings, "bench")
        watcher = ResultWatcher(settings)
        watcher.start()
        try:
            with Client(settings) as client:
                # Warm-up: both processes joined their groups and registered services.
                warm = client.request("Bench/noop", 0)
                client.send_requests([warm])
                watcher.wait_for({warm.id}, 60)

                requests = [client.request("Bench/noop", i) for i in range(args.invocations)]
                started = time.perf_counter()
                client.send_requests(requests)
                last = watcher.wait_for({r.id for r in requests}, 600)
                rate = args.invocations / (last - started)
                report["fire_and_forget_completed_per_s"] = round(rate)
                report["fire_and_forget_ratio_to_ceiling"] = round(
                    rate / float(report["raw_passthrough_msgs_per_s"]),
                    4,  # type: ignore[arg-type]
                )

                latencies = []
                for i in range(args.latency_samples):
                    request = client.request("Bench/noop", i)
                    sent = time.perf_counter()
                    client.send_requests([request])
                    latencies.append((watcher.wait_for({request.id}, 30) - sent) * 1000)
                latencies.sort()
                report["latency_c1_p50_ms"] = round(statistics.median(latencies), 2)
                report["latency_c1_p99_ms"] = round(latencies[int(len(latencies) * 0.99) - 1], 2)

                step_requests = [
                    client.request("Bench/steps", i) for i in range(args.step_invocations)
                ]
                started = time.perf_counter()
                client.send_requests(step_requests)
                last = watcher.wait_for({r.id for r in step_requests}, 600)
                report["steps_per_s"] = round(10 * args.step_invocations / (last - started))
        finally:
            watcher.stop()
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--invocations", type=int, default=20_000)
    parser.add_argument("--latency-samples", type=int, default=500)
    parser.add_argument("--step-invocations", type=int, default=2_000)
    parser.add_argument("--raw-messages", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    print(json.dumps(run_bench(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
