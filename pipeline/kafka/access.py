"""A check, at start, that the cluster lets this process in.

librdkafka retries a failed SASL or TLS handshake for ever and reports it only to an
error callback, so a wrong password looks like a hang; this asks for metadata once and
turns such a failure into an error that names the cluster and the problem. A cluster
that is merely unreachable is no error here: processes ride out outages.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from pipeline.errors import ValidationError
from pipeline.kafka.config import ClusterConfig

log = logging.getLogger(__name__)

_REFUSALS = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.UNSUPPORTED_SASL_MECHANISM,
        KafkaError.ILLEGAL_SASL_STATE,
    }
)


class ClusterAccessRefused(ValidationError):
    """The cluster refused this process's credentials or TLS setup."""


def check_access(cluster: ClusterConfig, timeout_s: float = 10.0) -> AdminClient | None:
    """The admin client that the cluster answered within `timeout_s`, for more
    questions over the same connection; None if it did not answer; raises if it
    refused us."""
    refusals: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if error.code() in _REFUSALS:
            refusals.append(error)

    try:
        admin = AdminClient(cluster.client({"error_cb": on_error}))  # type: ignore[dict-item]
    except KafkaException as exc:
        raise ClusterAccessRefused(f"{cluster.describe()}: {exc.args[0].str()}") from None
    deadline = time.monotonic() + timeout_s
    while not refusals:
        try:
            admin.list_topics(timeout=1.0)
            return admin
        except KafkaException as exc:
            admin.poll(0)  # serves the error callback
            if time.monotonic() > deadline and not refusals:
                log.warning("%s does not answer yet (%s)", cluster.describe(), exc.args[0].str())
                return None
    raise ClusterAccessRefused(
        f"{cluster.describe()} refused this process: {refusals[0].str()}; check the "
        "credentials and security settings (PIPELINE_KAFKA_* variables, "
        "PIPELINE_KAFKA_PROPERTIES_FILE)"
    )
