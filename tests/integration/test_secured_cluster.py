"""The whole pipeline on a cluster whose clients must log in: topics, scheduler, worker,
Admin API, client and CLI all made from one cluster configuration, given as a
properties file or as variables; a wrong password fails at start, naming the cluster."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from pydantic import SecretStr

from pipeline.client import Client
from pipeline.kafka.access import ClusterAccessRefused
from pipeline.localkafka.broker import choose_ports
from tests.support.fleet import Fleet, assert_once_each, read_results
from tests.support.runtime import run_cli, runtime_settings
from tests.support.secured_broker import (
    PLAIN_PASSWORD,
    PLAIN_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
    SecuredBroker,
)


def _sasl(mechanism: str, user: str, password: str) -> dict[str, SecretStr]:
    return {
        "security.protocol": SecretStr("SASL_PLAINTEXT"),
        "sasl.mechanism": SecretStr(mechanism),
        "sasl.username": SecretStr(user),
        "sasl.password": SecretStr(password),
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_the_whole_pipeline_runs_on_a_sasl_listener(
    kafka_secured: SecuredBroker, topic_prefix: str, tmp_path: Path, mechanism: str
) -> None:
    if mechanism == "PLAIN":
        # From a properties file, as kcat -F and Kafka's own tools read one.
        properties = tmp_path / "client.properties"
        properties.write_text(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n"
            f"sasl.username={PLAIN_USER}\nsasl.password={PLAIN_PASSWORD}\n"
        )
        settings = runtime_settings(
            kafka_secured.sasl_bootstrap, topic_prefix, kafka_properties_file=properties
        )
        password = PLAIN_PASSWORD
    else:
        settings = runtime_settings(
            kafka_secured.sasl_bootstrap,
            topic_prefix,
            kafka_properties=_sasl(mechanism, SCRAM_USER, SCRAM_PASSWORD),
        )
        password = SCRAM_PASSWORD
    created = run_cli(settings, "topics", "create")
    assert created.returncode == 0, created.stderr
    (admin_port,) = choose_ports("127.0.0.1", [None])
    fleet = Fleet(
        settings,
        tmp_path,
        tmp_path / "steps.log",
        env={"PIPELINE_ADMIN_API_PORT": str(admin_port)},
    )
    for role in ("scheduler", "worker", "admin-api"):
        fleet.start(role, role)
    try:
        with Client(settings) as client:
            ids = {client.send("Crash/work", n) for n in range(20)}
        assert_once_each(read_results(settings, ids, timeout_s=120, quiet_s=1), ids)
        token = settings.admin_api_tokens[0].get_secret_value()
        some = sorted(ids)[0]
        body = _get(f"http://127.0.0.1:{admin_port}/invocations/{some}", token)
        assert body["status"] == "completed"
        queues = run_cli(settings, "queues")
        assert queues.returncode == 0, queues.stderr
    finally:
        fleet.stop_all()
    for role in ("scheduler", "worker", "admin-api"):
        assert password not in fleet.log(role), f"the {role} printed the password"


def _get(url: str, token: str, timeout_s: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body: dict[str, object] = json.load(response)
                return body
        except OSError:  # not serving yet, or not caught up yet (404)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_wrong_password_fails_at_start_naming_the_cluster(
    kafka_secured: SecuredBroker, topic_prefix: str, tmp_path: Path
) -> None:
    wrong = "not-the-password-5d1e"
    settings = runtime_settings(
        kafka_secured.sasl_bootstrap,
        topic_prefix,
        kafka_properties=_sasl("PLAIN", PLAIN_USER, wrong),
    )
    named = f"cluster {kafka_secured.sasl_bootstrap} (SASL_PLAINTEXT, PLAIN as 'alice')"
    with pytest.raises(ClusterAccessRefused, match=rf"{re.escape(named)} refused this process"):
        Client(settings)
    started = time.monotonic()
    created = run_cli(settings, "topics", "create")
    assert created.returncode == 2
    assert named in created.stderr and "uthentication" in created.stderr, created.stderr
    for command in (["scheduler"], ["worker", "--service", "tests.support.crash_service:service"]):
        process = run_cli(settings, *command)
        assert process.returncode == 2, process.stderr[-2000:]
        assert named in process.stderr
        assert wrong not in process.stderr + process.stdout
    assert time.monotonic() - started < 60
