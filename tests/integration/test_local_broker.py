"""The session broker supports what the runtime relies on: transactions + read_committed."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

# NewTopic's documented home; its stubs re-export it implicitly, which --strict rejects.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

pytestmark = pytest.mark.integration


def test_transactional_produce_is_visible_only_when_committed(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}tx"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1)]
    ).values():
        future.result(timeout=30)

    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"{topic_prefix}producer",
        }
    )
    producer.init_transactions(30)
    # An aborted record sits in the log before the committed one: a consumer that
    # returns only the committed one proves both abort markers and read_committed work.
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"committed")
    producer.commit_transaction(30)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{topic_prefix}{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.subscribe([topic])
        values: list[bytes | None] = []
        for _ in range(300):
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                raise AssertionError(f"consumer error: {error}")
            values.append(msg.value())
        else:
            raise AssertionError(f"no end of partition within 30s; got {values!r}")
    finally:
        consumer.close()

    assert values == [b"committed"]
