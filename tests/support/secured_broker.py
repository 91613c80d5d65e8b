"""A local broker with a SASL_PLAINTEXT listener, as a secured cluster looks to clients.

The broker keeps a PLAINTEXT listener too, for its own start-up probe and for creating
SCRAM credentials; the code under test is only ever given the SASL address.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from pipeline.localkafka.broker import BrokerConfig, LocalBroker, choose_ports

PLAIN_USER, PLAIN_PASSWORD = "alice", "alice-pw-7f3a"
SCRAM_USER, SCRAM_PASSWORD = "carol", "carol-pw-91c2"


@dataclass(frozen=True)
class SecuredBroker:
    sasl_bootstrap: str
    plaintext_bootstrap: str


@contextmanager
def secured_broker(data_dir: Path) -> Iterator[SecuredBroker]:
    host = "127.0.0.1"
    port, controller_port, sasl_port = choose_ports(host, [None, None, None])
    listeners = f"PLAINTEXT://{host}:{port},SASL_PLAINTEXT://{host}:{sasl_port}"
    overrides = (
        ("listeners", f"{listeners},CONTROLLER://{host}:{controller_port}"),
        ("advertised.listeners", listeners),
        (
            "listener.security.protocol.map",
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        ),
        ("sasl.enabled.mechanisms", "PLAIN,SCRAM-SHA-512"),
        (
            "listener.name.sasl_plaintext.plain.sasl.jaas.config",
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{PLAIN_USER}="{PLAIN_PASSWORD}";',
        ),
        (
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config",
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        ),
    )
    broker = LocalBroker(
        BrokerConfig(
            data_dir=data_dir, port=port, controller_port=controller_port, overrides=overrides
        )
    )
    plaintext = broker.start()
    try:
        admin = AdminClient({"bootstrap.servers": plaintext})
        upsert = UserScramCredentialUpsertion(
            SCRAM_USER,
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
            SCRAM_PASSWORD.encode(),
        )
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(30)
        yield SecuredBroker(f"{host}:{sasl_port}", plaintext)
    finally:
        broker.stop()
