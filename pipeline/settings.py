"""Settings of every pipeline process, read from the environment only here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.core.membership import KAFKA_DEFAULT_MIN_SESSION_TIMEOUT_MS
from pipeline.core.payload import KIB, PayloadLimits
from pipeline.errors import ValidationError
from pipeline.kafka.config import ClusterConfig, Role, parse_properties, properties_from_environment
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
    kafka_properties_file: Path | None = Field(
        default=None,
        description="A properties file (kcat's and Kafka's tools' format: name=value "
        "lines) of librdkafka properties for every client: security.protocol, sasl.*, "
        "ssl.*, tuning. PIPELINE_KAFKA_<NAME> variables (dots as underscores) override "
        "it, and PIPELINE_KAFKA_<ROLE>__<NAME> for one role (scheduler, worker, admin, "
        "client, cli, topics).",
    )
    kafka_properties: dict[str, SecretStr] = Field(default_factory=dict)
    kafka_role_properties: dict[Role, dict[str, SecretStr]] = Field(default_factory=dict)
    topic_prefix: str = "pipeline."
    runtime_partitions: int = Field(default=8, ge=1)
    results_partitions: int = Field(default=8, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    worker_slots: int = Field(default=256, ge=1, description="Invoker slots per worker.")
    lease_timeout_ms: int = Field(
        default=60_000,
        ge=100,
        description="A dispatched attempt that no worker has reported taking within this "
        "long (it waits in `dispatch` while every slot is busy) is fenced and retried.",
    )
    heartbeat_timeout_ms: int = Field(
        default=3_000,
        ge=500,
        description="A taken attempt whose worker sends no heartbeat or step for this long "
        "(the worker died or is cut off) is fenced and retried. Workers send a heartbeat "
        "every (heartbeat_timeout_ms - lease_margin_ms) / 3.",
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
    session_timeout_ms: int | None = Field(
        default=None,
        ge=1_000,
        description="Consumer-group session of schedulers and workers: a process killed "
        "or cut off loses its partitions after this long, and only then does another "
        "take them over. Unset: 3 s, or the cluster's `group.min.session.timeout.ms` "
        "where that is higher (6 s on brokers with default settings; the local broker "
        "accepts 1 s), read from the cluster when a process starts.",
    )
    scheduler_batch_max: int = Field(default=2000, ge=1)
    standby_copies: bool = Field(
        default=True,
        description="Each scheduler keeps a warm copy of the partitions other instances "
        "own, so that taking one over reads only the last moment of its changelog. Costs "
        "every instance the RocksDB writes of the whole changelog; no cost with one.",
    )
    instance_id: str | None = Field(
        default=None,
        description="Stable name of this process, unique per role. Set it (e.g. to a "
        "StatefulSet pod name) and a restarted process takes its partitions back and "
        "fences its predecessor's open transaction at once; unset, a restart waits for "
        "the session and transaction (3 s) timeouts of the dead process.",
    )

    state_dir: Path | None = Field(
        default=None,
        description="Where the scheduler keeps its local RocksDB state (a cache of the "
        "changelog: losing it costs a full restore, not data). Default: "
        "$XDG_STATE_HOME/pipeline, else ~/.local/state/pipeline.",
    )

    max_request_bytes: int = Field(
        default=256 * KIB,
        ge=1 * KIB,
        description="Largest invocation request (input, headers and ids) accepted; a "
        "larger record on `invocations` goes to the dead-letter topic with the reason.",
    )
    max_output_bytes: int = Field(
        default=256 * KIB,
        ge=1 * KIB,
        description="Largest handler output; a larger one fails the invocation with a "
        "PayloadTooLarge result.",
    )
    max_journal_bytes: int = Field(
        default=384 * KIB,
        ge=1 * KIB,
        description="Largest journal of one invocation (every step's value, the requests "
        "of sends and calls, call results); a step beyond it fails the invocation.",
    )
    max_record_bytes: int = Field(
        default=2048 * KIB,
        ge=64 * KIB,
        description="`max.message.bytes` of the runtime topics; the limits above must fit "
        "in it, and the dead-letter topic takes a copy of any record plus its reason.",
    )

    admin_api_host: str = "127.0.0.1"
    admin_api_port: int = 8080
    admin_api_tokens: tuple[SecretStr, ...] = Field(
        default=(SecretStr("dev-token"),),
        description="Admin API tokens of role admin: they may read and change everything.",
    )
    admin_api_read_tokens: tuple[SecretStr, ...] = Field(
        default=(),
        description="Admin API tokens of role read: GET only; any change is 403.",
    )
    admin_api_max_body_bytes: int = Field(
        default=1024 * KIB,
        ge=1 * KIB,
        description="Largest Admin API request body; a larger one is 413 before it is read.",
    )
    admin_api_docs: Literal["public", "token", "off"] = Field(
        default="public",
        description="`/docs`, `/redoc` and `/openapi.json`: served to anyone (they hold no "
        "data), only with a token, or not at all.",
    )

    tracing_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"

    @model_validator(mode="before")
    @classmethod
    def _kafka_properties_from_file_and_environment(cls, data: Any) -> Any:
        """The file first, then what was passed in, then the environment's variables."""
        if not isinstance(data, dict):
            return data
        common: dict[str, Any] = {}
        path = data.get("kafka_properties_file")
        if path:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ValueError(f"kafka_properties_file {str(path)!r}: {exc.strerror}") from None
            common.update(parse_properties(text, str(path)))
        common.update(data.get("kafka_properties") or {})
        from_env, per_role = properties_from_environment(os.environ)
        common.update(from_env)
        roles: dict[str, dict[str, Any]] = {
            role: dict(values) for role, values in (data.get("kafka_role_properties") or {}).items()
        }
        for role, values in per_role.items():
            roles.setdefault(role, {}).update(values)
        return {**data, "kafka_properties": common, "kafka_role_properties": roles}

    @property
    def cluster(self) -> ClusterConfig:
        """The cluster every Kafka client of this process is made for."""
        return ClusterConfig(
            self.kafka_bootstrap_servers, self.kafka_properties, self.kafka_role_properties
        )

    @model_validator(mode="after")
    def _cluster_is_usable(self) -> Settings:
        try:
            self.cluster  # noqa: B018 - refuses properties the project owns
        except ValidationError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _heartbeats_fit_lease(self) -> Settings:
        if self.heartbeat_timeout_ms < self.lease_margin_ms + 300:
            raise ValueError(
                f"heartbeat_timeout_ms={self.heartbeat_timeout_ms} leaves a worker no time "
                f"to renew a lease after lease_margin_ms={self.lease_margin_ms}: raise it "
                "to at least lease_margin_ms + 300"
            )
        return self

    @property
    def heartbeat_interval_ms(self) -> int:
        """How often a worker renews the leases of the attempts it runs."""
        return (self.heartbeat_timeout_ms - self.lease_margin_ms) // 3

    @model_validator(mode="after")
    def _limits_fit_records(self) -> Settings:
        needed = self.payload_limits.record_bytes_needed
        if needed > self.max_record_bytes:
            raise ValueError(
                f"max_request_bytes, max_output_bytes and max_journal_bytes need records of "
                f"{needed} bytes, over max_record_bytes={self.max_record_bytes}: lower them "
                "or raise PIPELINE_MAX_RECORD_BYTES"
            )
        return self

    @property
    def payload_limits(self) -> PayloadLimits:
        return PayloadLimits(
            max_request_bytes=self.max_request_bytes,
            max_output_bytes=self.max_output_bytes,
            max_journal_bytes=self.max_journal_bytes,
        )

    def membership(self, role: str) -> dict[str, str | int]:
        """Consumer-group membership settings of a process of `role`."""
        # Unset and not read from the cluster (see `joined_cluster`): a session
        # every cluster accepts.
        session = self.session_timeout_ms or KAFKA_DEFAULT_MIN_SESSION_TIMEOUT_MS
        config: dict[str, str | int] = {
            "session.timeout.ms": session,
            "heartbeat.interval.ms": max(session // 5, 100),
        }
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
            max_record_bytes=self.max_record_bytes,
        )
