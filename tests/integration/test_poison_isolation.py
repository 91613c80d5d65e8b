"""A batch that fails for a reason of its own content is run again one record at a
time: the record that fails alone is dead-lettered and its invocation fails with an
internal error; the other records of the batch, and the partition, go on.

The fault is injected where no input can reach today (the codec raises while encoding
one invocation's dispatch), standing in for the next bug nobody has found yet.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

from confluent_kafka import Producer

from pipeline import Context, Service
from pipeline.codec.records import WireCodec
from pipeline.core.model import DispatchOrder, ResultStatus
from pipeline.runtime.scheduler import SchedulerProcessor
from tests.support.runtime import register, running_worker, runtime_settings
from tests.support.topics import Outcomes
from topics.provision import provision

service = Service("Isolated")


@service.handler()
async def echo(ctx: Context, value: object) -> object:
    return value


class CodecWithABug(WireCodec):
    def encode_dispatch(self, order: DispatchOrder) -> bytes:
        if order.request.id.startswith("bug-"):
            raise RuntimeError(f"injected bug for {order.request.id}")
        return super().encode_dispatch(order)


def test_the_record_that_fails_alone_is_quarantined_and_the_batch_goes_on(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    provision(kafka_bootstrap, settings.catalogue)
    register(settings, [service])
    processor = SchedulerProcessor(settings, codec=CodecWithABug())
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(stop,), daemon=True)
    thread.start()
    outcomes = Outcomes(settings)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    ids = [f"bug-{i}" if i % 20 == 7 else f"good-{i}" for i in range(100)]
    try:
        with running_worker(settings, [service]):
            for invocation_id in ids:  # one burst: bugs share batches with good records
                value = {"target": "Isolated/echo", "input": 1, "id": invocation_id}
                producer.produce(
                    settings.topic_names.invocations,
                    json.dumps(value).encode(),
                    headers=[("content-type", b"application/json")],
                )
            producer.flush(30)
            outcomes.wait_until(
                lambda: {r.invocation_id for r in outcomes.results()} >= set(ids),
                60,
                "a result for every invocation",
            )
        results = outcomes.results()
        counts = Counter(r.invocation_id for r in results)
        assert set(counts.values()) == {1}, counts
        by_id = {r.invocation_id: r for r in results}
        bugs = [i for i in ids if i.startswith("bug-")]
        for invocation_id in ids:
            result = by_id[invocation_id]
            if invocation_id in bugs:
                assert result.status is ResultStatus.FAILED
                assert result.failure is not None and result.failure.error_type == "InternalError"
                assert f"injected bug for {invocation_id}" in result.failure.message
            else:
                assert result.status is ResultStatus.COMPLETED
        reasons = [d.reason for d in outcomes.dead_letters()]
        for invocation_id in bugs:
            assert any(f"injected bug for {invocation_id}" in r for r in reasons), reasons
        assert processor.quarantined == len(bugs)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(30)
        outcomes.close()
