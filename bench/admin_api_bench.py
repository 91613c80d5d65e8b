"""The Admin API with many finished invocations retained: memory, lookups, start-up.

    .venv/bin/python -m bench.admin_api_bench [--invocations 1000000]

Issue 10's target, with 1,000,000 finished invocations retained: Admin API RSS
< 250 MB, `GET /invocations/{id}` p99 < 20 ms, start-up to serving < 30 s.

It writes N finished invocations (completed and failed, 10 services, 1,000 scopes, a
two-entry journal and an output each) to the scheduler's changelog, one record per
invocation as compaction leaves them, the way the scheduler encodes them. Then it starts
`pipeline admin-api` as its own process with a kept state directory, and measures:

- start-up: from the process start until every partition's last invocation is served
  (the replica has read the whole changelog), on a fresh directory, then after a
  restart that resumes from the kept one;
- RSS of the process once caught up and after the requests;
- latency of `GET /invocations/{id}` for random ids, and of a filtered list page.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from confluent_kafka import Producer

from bench.harness import broker, fresh_settings
from bench.queues_bench import rss_mb
from pipeline.codec.records import WireCodec
from pipeline.codec.state_keys import invocation_key
from pipeline.core.lifecycle import InvocationStatus
from pipeline.core.model import EntryKind, Failure, InvocationRequest, JournalEntry, Target
from pipeline.core.partitioning import partition_for
from pipeline.core.state import Invocation
from pipeline.settings import Settings

TOKEN = "bench-token"
PARTITIONS = 12


def finished(n: int, now_ms: int) -> Invocation:
    failed = n % 10 == 0
    request = InvocationRequest(
        id=f"inv-{n:08d}",
        target=Target(f"Service{n % 10}", "handle"),
        input=json.dumps({"order": n, "amount": n % 977}).encode(),
        created_at_ms=now_ms - 60_000,
        scope=f"tenant-{n % 1000}",
        limit_key=f"user-{n % 7919}",
    )
    return Invocation(
        request=request,
        status=InvocationStatus.FAILED if failed else InvocationStatus.COMPLETED,
        attempt=3 if failed else 1,
        journal=(
            JournalEntry(0, EntryKind.RUN, "reserve", b'"r-1"'),
            JournalEntry(1, EntryKind.RUN, "charge", b'"c-1"'),
        ),
        wake_at_ms=now_ms + 86_400_000,
        first_started_at_ms=now_ms - 59_000,
        finished_at_ms=now_ms - 58_000,
        last_failure=Failure("card declined", "PaymentDeclined", terminal=True) if failed else None,
        output=None if failed else json.dumps({"receipt": f"r-{n}"}).encode(),
    )


def write_changelog(settings: Settings, count: int) -> dict[int, str]:
    """N finished invocations on the changelog; the last id written to each partition."""
    codec, now = WireCodec(), int(time.time() * 1000)
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
        }
    )
    last: dict[int, str] = {}
    topic = settings.topic_names.scheduler_state
    for n in range(count):
        invocation = finished(n, now)
        partition = partition_for(invocation.request.partition_key, settings.runtime_partitions)
        while True:
            try:
                producer.produce(
                    topic,
                    key=invocation_key(invocation.id).encode(),
                    value=codec.encode_invocation_state(invocation),
                    partition=partition,
                )
                break
            except BufferError:
                producer.poll(0.1)
        last[partition] = invocation.id
        if n % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    return last


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_admin_api(settings: Settings, state_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "PIPELINE_TOPIC_PREFIX": settings.topic_prefix,
        "PIPELINE_RUNTIME_PARTITIONS": str(settings.runtime_partitions),
        "PIPELINE_INSTANCE_ID": "bench",
        "PIPELINE_STATE_DIR": str(state_dir),
        "PIPELINE_ADMIN_API_PORT": str(port),
        "PIPELINE_ADMIN_API_TOKENS": json.dumps([TOKEN]),
    }
    log = open(os.environ.get("BENCH_LOG", os.devnull), "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "admin-api"], env=env, stdout=log, stderr=log
    )


def serving_all(http: httpx.Client, last: dict[int, str], started: float) -> float:
    """Seconds from `started` until the last invocation of every partition is served."""
    waiting = set(last.values())
    while waiting:
        try:
            for invocation_id in list(waiting):
                if http.get(f"/invocations/{invocation_id}").status_code == 200:
                    waiting.discard(invocation_id)
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() - started > 600:
            raise RuntimeError(f"not serving {sorted(waiting)[:3]} after 600 s")
        time.sleep(0.1)
    return time.monotonic() - started


def percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)

    def at(q: float) -> float:
        return round(samples[min(len(samples) - 1, int(q * len(samples)))] * 1000, 2)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": at(1.0)}


def measure(http: httpx.Client, count: int, requests: int) -> dict[str, object]:
    ids = [f"inv-{random.randrange(count):08d}" for _ in range(requests)]
    gets = []
    for invocation_id in ids:
        began = time.perf_counter()
        response = http.get(f"/invocations/{invocation_id}")
        gets.append(time.perf_counter() - began)
        assert response.status_code == 200, response.text
    lists = []
    cursor = None
    for _ in range(200):
        began = time.perf_counter()
        params: dict[str, str | int] = {"status": "failed", "service": "Service0", "limit": 100}
        if cursor is not None:
            params["cursor"] = cursor
        page = http.get("/invocations", params=params).json()
        lists.append(time.perf_counter() - began)
        cursor = page["next_cursor"]
    return {"get_by_id": percentiles(gets), "list_page_of_100": percentiles(lists)}


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--invocations", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=5_000)
    args = parser.parse_args()
    with broker() as bootstrap, tempfile.TemporaryDirectory() as state_dir:
        settings = fresh_settings(bootstrap, "adminapi", PARTITIONS)
        began = time.monotonic()
        last = write_changelog(settings, args.invocations)
        print(f"wrote {args.invocations} invocations in {time.monotonic() - began:.1f}s")
        port = free_port()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30)
        report: dict[str, object] = {"invocations": args.invocations}
        for run in ("fresh", "restart"):
            started = time.monotonic()
            process = start_admin_api(settings, Path(state_dir), port)
            try:
                report[f"{run}_start_to_serving_all_s"] = round(serving_all(http, last, started), 2)
                report[f"{run}_rss_caught_up_mb"] = round(rss_mb(process.pid), 1)
                report[f"{run}_latency"] = measure(http, args.invocations, args.requests)
                report[f"{run}_rss_after_requests_mb"] = round(rss_mb(process.pid), 1)
            finally:
                stop(process)
            print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
