"""One cluster configuration for every client: from a properties file and the
environment, per role, with secrets that are never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from pipeline.errors import ValidationError
from pipeline.kafka.config import ClusterConfig, parse_properties, properties_from_environment
from pipeline.settings import Settings

SASL_FILE = """\
# kcat -F style
security.protocol=SASL_PLAINTEXT
sasl.mechanism = SCRAM-SHA-512
sasl.username=alice
! a Java-style comment
sasl.password=s3cr3t=with=equals
"""


def test_a_properties_file_is_read_as_kcat_and_kafka_tools_read_it() -> None:
    assert parse_properties(SASL_FILE, "client.properties") == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "s3cr3t=with=equals",
    }
    with pytest.raises(ValidationError, match=r"client.properties:2: expected name=value"):
        parse_properties("a=1\nsasl.password\n", "client.properties")


def test_variables_name_properties_for_every_role_or_for_one() -> None:
    common, per_role = properties_from_environment(
        {
            "PIPELINE_KAFKA_SASL_PASSWORD": "x",
            "PIPELINE_KAFKA_WORKER__FETCH_WAIT_MAX_MS": "5",
            "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": "ignored:9092",
            "KAFKA_HEAP_OPTS": "-Xmx1g",
        }
    )
    assert common == {"sasl.password": "x"}
    assert per_role == {"worker": {"fetch.wait.max.ms": "5"}}
    with pytest.raises(ValidationError, match="'SCHEDULR' is no role"):
        properties_from_environment({"PIPELINE_KAFKA_SCHEDULR__LINGER_MS": "1"})


def test_the_users_properties_win_except_those_the_project_owns() -> None:
    cluster = ClusterConfig(
        "b:9092",
        {"linger.ms": SecretStr("50"), "security.protocol": SecretStr("SASL_SSL")},
        {"scheduler": {"linger.ms": SecretStr("7")}},
    )
    config = cluster.as_role("scheduler").client(
        {"linger.ms": 0, "isolation.level": "read_committed"}
    )
    assert config == {
        "bootstrap.servers": "b:9092",
        "linger.ms": "7",
        "security.protocol": "SASL_SSL",
        "isolation.level": "read_committed",
    }
    assert cluster.as_role("worker").client({"linger.ms": 0})["linger.ms"] == "50"
    with pytest.raises(ValidationError, match=r"\['isolation.level'\] \(for worker\)"):
        ClusterConfig("b:9092", {}, {"worker": {"isolation.level": SecretStr("x")}})


def test_settings_take_the_file_then_the_environment_and_never_print_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "client.properties"
    path.write_text(SASL_FILE)
    monkeypatch.setenv("PIPELINE_KAFKA_PROPERTIES_FILE", str(path))
    monkeypatch.setenv("PIPELINE_KAFKA_SASL_USERNAME", "bob")
    monkeypatch.setenv("PIPELINE_KAFKA_ADMIN__SOCKET_TIMEOUT_MS", "3000")
    settings = Settings(kafka_bootstrap_servers="b:9092")
    cluster = settings.cluster
    admin = cluster.as_role("admin").client({})
    assert admin["sasl.username"] == "bob"
    assert admin["socket.timeout.ms"] == "3000"
    assert admin["sasl.password"] == "s3cr3t=with=equals"
    assert "socket.timeout.ms" not in cluster.as_role("worker").client({})
    assert cluster.describe() == "cluster b:9092 (SASL_PLAINTEXT, SCRAM-SHA-512 as 'bob')"
    for printed in (repr(settings), str(settings), repr(cluster), settings.model_dump_json()):
        assert "s3cr3t" not in printed


def test_a_missing_properties_file_or_an_owned_property_fails_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=r"kafka_properties_file '.*nowhere': No such file"):
        Settings(kafka_properties_file=tmp_path / "nowhere")
    monkeypatch.setenv("PIPELINE_KAFKA_TRANSACTIONAL_ID", "mine")
    with pytest.raises(ValueError, match=r"\['transactional.id'\] .* are set by pipeline"):
        Settings()
