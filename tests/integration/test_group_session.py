"""The consumer-group session is chosen from what the cluster accepts, when unset."""

from __future__ import annotations

import time

from pipeline.runtime.kafka_clients import joined_cluster
from tests.support.runtime import runtime_settings


def test_an_unset_session_is_3_s_where_the_cluster_accepts_it(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = runtime_settings(kafka_bootstrap, topic_prefix)
    assert settings.session_timeout_ms is None
    # The local broker accepts sessions from 1 s (`group.min.session.timeout.ms`).
    assert joined_cluster(settings, "scheduler").session_timeout_ms == 3_000
    chosen = runtime_settings(kafka_bootstrap, topic_prefix, session_timeout_ms=10_000)
    assert joined_cluster(chosen, "scheduler").session_timeout_ms == 10_000


def test_a_cluster_that_does_not_answer_gets_a_session_every_cluster_accepts(
    topic_prefix: str,
) -> None:
    settings = runtime_settings("127.0.0.1:1", topic_prefix)
    started = time.monotonic()
    assert joined_cluster(settings, "scheduler").session_timeout_ms == 6_000
    assert time.monotonic() - started < 15
