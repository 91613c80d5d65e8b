"""The CLI prints exactly what the Admin API answers to the same question: both render
the operations layer's models. Every CLI command with an API twin, on the real broker,
against the real `pipeline admin-api` process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.client import Client
from pipeline.settings import Settings
from tests.integration.test_introspection import gated_pipeline
from tests.support.admin_api import admin_api_process
from tests.support.runtime import run_cli

pytestmark = pytest.mark.integration

TOKEN = "surface-admin"
TIMEOUT_S = 30.0


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def settings(
    kafka_bootstrap: str, topic_prefix: str, release: threading.Event
) -> Iterator[Settings]:
    with gated_pipeline(kafka_bootstrap, topic_prefix, release) as settings:
        yield settings


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[httpx.Client]:
    with admin_api_process(settings, tmp_path, admin=TOKEN) as base:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=TIMEOUT_S) as client:
            yield client


def cli(settings: Settings, *args: str) -> Any:
    done = run_cli(settings, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def same(api_answer: Callable[[], Any], printed: Any) -> None:
    """The API's answer becomes what the CLI printed (its views trail Kafka a little)."""
    deadline = time.monotonic() + TIMEOUT_S
    while (answer := api_answer()) != printed:
        assert time.monotonic() < deadline, f"API {answer!r}\n!= CLI {printed!r}"
        time.sleep(0.2)


def test_every_cli_command_with_an_api_twin_prints_what_the_api_answers(
    settings: Settings, api: httpx.Client, tmp_path: Path
) -> None:
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps({"rules": [{"id": "slow", "pattern": "slow/*", "rate": 2}]}))
    put = cli(settings, "limits", "put", str(rules_file))
    same(lambda: api.get("/limits/rules").json(), put)
    same(lambda: api.get("/limits/rules").json(), cli(settings, "limits", "get"))

    capped = cli(settings, "deployments", "set", "Gate", "3")
    same(lambda: api.get("/deployments/Gate/limits").json(), capped)
    same(lambda: api.get("/deployments").json(), cli(settings, "deployments", "list"))

    with Client(settings) as client:
        for _ in range(3):
            client.send("Gate/hold", {}, scope="acme", limit_key="k")
    same(lambda: api.get("/queues/acme/k").json().get("queued"), 2)
    same(lambda: api.get("/queues").json(), cli(settings, "queues"))
    same(
        lambda: api.get("/queues", params={"scope": "acme"}).json(),
        cli(settings, "queues", "--scope", "acme"),
    )
    same(lambda: api.get("/queues/acme/k").json(), cli(settings, "queues", "show", "acme/k"))
    same(lambda: api.get("/deployments").json(), cli(settings, "deployments", "list"))

    lifted = cli(settings, "deployments", "remove", "Gate")
    same(lambda: api.get("/deployments/Gate/limits").json(), lifted)

    # The API's twin answers 409 for an invocation that is not paused; its 202 body is
    # the model the CLI prints.
    resumed = cli(settings, "invocations", "resume", "some-id")
    schema = api.get("/openapi.json").json()["components"]["schemas"]["ResumeResponse"]
    assert set(resumed) == set(schema["properties"])
    assert resumed == {"invocation_id": "some-id", "status": "resume-requested"}
