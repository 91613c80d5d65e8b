"""A single-node Apache Kafka broker for development and tests, run from Maven jars.

No Docker and no Kafka tarball: `jars.ensure_jars` resolves the broker classpath with
Maven once, `broker.LocalBroker` formats a KRaft data dir and runs `kafka.Kafka`.
"""
