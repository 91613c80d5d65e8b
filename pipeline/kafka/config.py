"""One description of the Kafka cluster, from which every client the project builds is
made: the scheduler's, the worker's, the Admin API's views, the client library's, the
CLI's and topic provisioning's.

It carries any librdkafka property (`security.protocol`, `sasl.*`, `ssl.*`, tuning),
for all roles and per role. Secrets are kept as `SecretStr` and appear in no repr, log
line or error message: `describe()` is what may be printed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from pydantic import SecretStr

from pipeline.errors import ValidationError

Role = Literal["scheduler", "worker", "admin", "client", "cli", "topics"]
ROLES: tuple[Role, ...] = get_args(Role)

# Properties whose value is the project's to choose: what exactly-once, the
# co-partitioning and the leases rest on. A user setting one is refused at start.
OWNED_PROPERTIES = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "group.instance.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "isolation.level",
        "transactional.id",
        "enable.idempotence",
        "acks",
        "partition.assignment.strategy",
    }
)
_SECRET_MARKS = ("password", "secret", "jaas.config", "key.pem", "token")


def is_secret(name: str) -> bool:
    return any(mark in name for mark in _SECRET_MARKS)


ClientConfig = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class ClusterConfig:
    bootstrap_servers: str
    # Property -> value for every role, then per role; values of secret properties
    # (`is_secret`) are only ever unwrapped into a client's configuration.
    properties: Mapping[str, SecretStr] = field(default_factory=dict)
    role_properties: Mapping[Role, Mapping[str, SecretStr]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role, properties in (("every role", self.properties), *self.role_properties.items()):
            owned = sorted(OWNED_PROPERTIES & set(properties))
            if owned:
                raise ValidationError(
                    f"Kafka properties {owned} (for {role}) are set by pipeline itself: "
                    "remove them from the properties file and the PIPELINE_KAFKA_* variables"
                )

    def as_role(self, role: Role) -> ClusterConfig:
        """The cluster as clients of `role` see it: its own properties over the rest."""
        merged = {**self.properties, **self.role_properties.get(role, {})}
        return ClusterConfig(self.bootstrap_servers, merged)

    def client(self, config: Mapping[str, str | int | float | bool]) -> ClientConfig:
        """`config` (what the project sets for this client) under the cluster's own
        properties: the user's win, except the project's `OWNED_PROPERTIES`."""
        if not self.bootstrap_servers:
            raise ValidationError(
                "kafka_bootstrap_servers is empty: set KAFKA_BOOTSTRAP_SERVERS, or let the "
                "composition root fill it in from the local broker (`pipeline kafka start`)"
            )
        merged: ClientConfig = dict(config)
        merged.update({name: value.get_secret_value() for name, value in self.properties.items()})
        merged.update({k: v for k, v in config.items() if k in OWNED_PROPERTIES})
        merged["bootstrap.servers"] = self.bootstrap_servers
        return merged

    def describe(self) -> str:
        """The cluster as an operator recognises it, with no secret in it."""
        plain = {n: v.get_secret_value() for n, v in self.properties.items() if not is_secret(n)}
        protocol = plain.get("security.protocol", "PLAINTEXT").upper()
        parts = [protocol]
        mechanism = plain.get("sasl.mechanism") or plain.get("sasl.mechanisms")
        if protocol.startswith("SASL"):
            user = plain.get("sasl.username")
            parts.append(f"{mechanism or 'GSSAPI'}" + (f" as {user!r}" if user else ""))
        return f"cluster {self.bootstrap_servers} ({', '.join(parts)})"

    def __repr__(self) -> str:
        return f"ClusterConfig({self.describe()}, properties={sorted(self.properties)})"


def parse_properties(text: str, source: str) -> dict[str, str]:
    """A Java/kcat properties file: `name=value` lines, `#` and `!` comments."""
    properties: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ValidationError(
                f"{source}:{number}: expected name=value, got {line[:40]!r}"
                + ("..." if len(line) > 40 else "")
            )
        properties[name.strip()] = value.strip()
    return properties


ENV_PREFIX = "PIPELINE_KAFKA_"
# Settings of their own, not librdkafka properties.
_NOT_PROPERTIES = frozenset(
    {"BOOTSTRAP_SERVERS", "PROPERTIES_FILE", "PROPERTIES", "ROLE_PROPERTIES"}
)


def properties_from_environment(
    environ: Mapping[str, str],
) -> tuple[dict[str, str], dict[Role, dict[str, str]]]:
    """`PIPELINE_KAFKA_SASL_PASSWORD=x` is `sasl.password=x` for every role, and
    `PIPELINE_KAFKA_WORKER__FETCH_WAIT_MAX_MS=5` is `fetch.wait.max.ms=5` for workers."""
    common: dict[str, str] = {}
    per_role: dict[Role, dict[str, str]] = {}
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        rest = variable[len(ENV_PREFIX) :]
        if rest in _NOT_PROPERTIES:
            continue
        role_name, sep, name = rest.partition("__")
        if not sep:
            common[_property_name(rest)] = value
            continue
        role = role_name.lower()
        if role not in ROLES:
            raise ValidationError(
                f"{variable}: {role_name!r} is no role; one of {[r.upper() for r in ROLES]}"
            )
        per_role.setdefault(role, {})[_property_name(name)] = value
    return common, per_role


def _property_name(variable_part: str) -> str:
    return variable_part.lower().replace("_", ".")
