"""Settings of every pipeline process, read from the environment only here."""

from __future__ import annotations

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
    scheduler_batch_max: int = Field(default=2000, ge=1)
    instance_id: str = Field(
        default="0",
        description="Stable per process: a restarted scheduler with the same id fences its "
        "predecessor's open transaction at once instead of waiting for it to time out.",
    )

    admin_api_host: str = "127.0.0.1"
    admin_api_port: int = 8080
    admin_api_tokens: tuple[SecretStr, ...] = (SecretStr("dev-token"),)

    tracing_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"

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
