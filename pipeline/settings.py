"""Settings of every pipeline process, read from the environment only here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from topics import TopicCatalogue, TopicNames


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIPELINE_", frozen=True, extra="ignore")

    kafka_bootstrap_servers: str = Field(
        default="",
        validation_alias=AliasChoices(
            "KAFKA_BOOTSTRAP_SERVERS", "PIPELINE_KAFKA_BOOTSTRAP_SERVERS"
        ),
        description="Empty means: use the local broker that `pipeline kafka start` runs.",
    )
    topic_prefix: str = "pipeline."
    runtime_partitions: int = Field(default=8, ge=1)
    results_partitions: int = Field(default=8, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    worker_slots: int = Field(default=256, ge=1, description="Invoker slots per worker.")
    lease_timeout_ms: int = Field(
        default=60_000,
        ge=100,
        description="A running attempt that reports nothing for this long is fenced and retried.",
    )
    retention_ms: int = Field(
        default=24 * 3600 * 1000,
        ge=0,
        description="How long a finished invocation is remembered: its status stays "
        "queryable and a request with its id or idempotency key is dropped as a duplicate.",
    )
    lease_margin_ms: int = Field(
        default=1_000,
        ge=0,
        description="Workers give up an attempt this long before its lease could expire "
        "(covers clock skew between worker and scheduler hosts).",
    )
    scheduler_batch_max: int = Field(default=2000, ge=1)
    instance_id: str | None = Field(
        default=None,
        description="Stable name of this process, unique per role. Set it (e.g. to a "
        "StatefulSet pod name) and a restarted process takes its partitions back and "
        "fences its predecessor's open transaction at once; unset, a restart waits for "
        "the session (10 s) and transaction (10 s) timeouts of the dead process.",
    )

    state_dir: Path | None = Field(
        default=None,
        description="Where the scheduler keeps its local RocksDB state (a cache of the "
        "changelog: losing it costs a full restore, not data). Default: "
        "$XDG_STATE_HOME/pipeline, else ~/.local/state/pipeline.",
    )

    admin_api_host: str = "127.0.0.1"
    admin_api_port: int = 8080
    admin_api_tokens: tuple[SecretStr, ...] = (SecretStr("dev-token"),)

    tracing_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"

    def membership(self, role: str) -> dict[str, str | int]:
        """Consumer-group membership settings of a process of `role`."""
        config: dict[str, str | int] = {"session.timeout.ms": 10_000}
        if self.instance_id is not None:
            config["group.instance.id"] = f"{role}-{self.instance_id}"
        return config

    @property
    def topic_names(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    @property
    def catalogue(self) -> TopicCatalogue:
        return TopicCatalogue(
            self.topic_names,
            runtime_partitions=self.runtime_partitions,
            results_partitions=self.results_partitions,
            replication_factor=self.replication_factor,
        )
