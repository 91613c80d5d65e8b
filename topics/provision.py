"""Create the catalogue's topics, idempotently; refuse when an existing one disagrees."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    OffsetSpec,
)

from topics.catalogue import MAX_MESSAGE_BYTES, MIN_INSYNC_REPLICAS, TopicCatalogue, TopicSpec

# Configs whose mismatch changes semantics (compaction vs deletion); others are tuning.
_CHECKED_CONFIGS = ("cleanup.policy",)


class TopicMismatch(Exception):
    """An existing topic disagrees with the catalogue; the message says how."""


def provision(
    cluster: str | Mapping[str, str | int | float | bool],
    catalogue: TopicCatalogue,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create missing topics; return the names created. Raises TopicMismatch."""
    # A bootstrap address, or a whole client configuration (security and all).
    admin = AdminClient(
        {"bootstrap.servers": cluster} if isinstance(cluster, str) else dict(cluster)
    )
    specs = catalogue.specs()
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [s for s in specs if s.name not in existing]
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.configs))
                for s in missing
            ],
            operation_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result(timeout_s)
                created.append(name)
            except KafkaException as exc:
                # Another process created it between our listing and our request.
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    _check_existing(admin, [s for s in specs if s.name in existing], existing, timeout_s)
    _wait_until_readable(admin, created, timeout_s)
    return created


def _wait_until_readable(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Wait until every partition of the created topics answers a ListOffsets request.

    Metadata names a leader before the leader has loaded the partition, and for that
    moment produce and list-offsets requests fail with "not leader".
    """
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        topics = admin.list_topics(timeout=timeout_s).topics
        for name in list(pending):
            metadata = topics.get(name)
            if metadata is None or metadata.error is not None:
                continue
            latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
            requests = {TopicPartition(name, p): latest for p in metadata.partitions}
            try:
                for future in admin.list_offsets(requests).values():
                    future.result(timeout_s)
            except KafkaException:
                continue
            pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"topics not readable after {timeout_s} s: {sorted(pending)}")
        if pending:
            time.sleep(0.05)


def _raise_config(
    admin: AdminClient, topic: str, name: str, want: str, timeout_s: float
) -> KafkaException | None:
    """Raise a topic's numeric config to what the catalogue says (a topic made by an
    older version, or by hand): a smaller record limit could refuse a record the
    runtime derives, a smaller min.insync.replicas acknowledges records held by one
    broker only. Returns the failure, if any."""
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[ConfigEntry(name, want, incremental_operation=AlterConfigOpType.SET)],
    )
    try:
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout_s)
    except KafkaException as exc:
        return exc
    return None


def _raise_record_limit(admin: AdminClient, topic: str, want: str, timeout_s: float) -> str | None:
    failure = _raise_config(admin, topic, MAX_MESSAGE_BYTES, want, timeout_s)
    if failure is None:
        return None
    return (
        f"topic {topic!r} takes records smaller than the {want} bytes the runtime needs "
        f"({MAX_MESSAGE_BYTES}), and raising it failed: {failure.args[0]}; raise it by hand "
        "or lower PIPELINE_MAX_RECORD_BYTES"
    )


def _raise_min_insync(admin: AdminClient, topic: str, want: str, timeout_s: float) -> str | None:
    failure = _raise_config(admin, topic, MIN_INSYNC_REPLICAS, want, timeout_s)
    if failure is None:
        return None
    return (
        f"topic {topic!r} has a lower {MIN_INSYNC_REPLICAS} than the catalogue's {want}, "
        f"and raising it failed: {failure.args[0]}; raise it by hand"
    )


def _check_existing(
    admin: AdminClient, specs: list[TopicSpec], existing: Mapping[str, Any], timeout_s: float
) -> None:
    problems: list[str] = []
    for spec in specs:
        partitions = existing[spec.name].partitions
        if len(partitions) != spec.partitions:
            problems.append(
                f"topic {spec.name!r} has {len(partitions)} partitions, the catalogue says "
                f"{spec.partitions}: delete it or set the partition count to match"
            )
        replicas = min((len(p.replicas) for p in partitions.values()), default=0)
        if replicas < spec.replication_factor:
            problems.append(
                f"topic {spec.name!r} has {replicas} replicas, the catalogue says "
                f"{spec.replication_factor}: reassign its partitions (kafka-reassign-"
                "partitions) or delete it, or lower PIPELINE_REPLICATION_FACTOR"
            )
    if specs:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in specs]
        described = admin.describe_configs(resources)
        for spec, resource in zip(specs, resources, strict=True):
            configs = described[resource].result(timeout_s)
            for name in _CHECKED_CONFIGS:
                want = spec.configs.get(name)
                have = configs[name].value if name in configs else None
                if want is not None and have != want:
                    problems.append(
                        f"topic {spec.name!r} has {name}={have}, the catalogue says {want}"
                    )
            want_size = spec.configs.get(MAX_MESSAGE_BYTES)
            have_size = configs[MAX_MESSAGE_BYTES].value if MAX_MESSAGE_BYTES in configs else None
            if want_size is not None and have_size is not None and int(have_size) < int(want_size):
                problem = _raise_record_limit(admin, spec.name, want_size, timeout_s)
                if problem is not None:
                    problems.append(problem)
            want_isr = spec.configs.get(MIN_INSYNC_REPLICAS)
            have_isr = (
                configs[MIN_INSYNC_REPLICAS].value if MIN_INSYNC_REPLICAS in configs else None
            )
            if want_isr is not None and have_isr is not None and int(have_isr) < int(want_isr):
                problem = _raise_min_insync(admin, spec.name, want_isr, timeout_s)
                if problem is not None:
                    problems.append(problem)
    if problems:
        raise TopicMismatch("; ".join(problems))
