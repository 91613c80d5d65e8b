"""The Admin API over the real views on the real broker, as `admin_api.server` wires
them, served in-process; commands and rule writes are recorded instead of sent."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from admin_api import create_app
from pipeline.codec.records import WireCodec
from pipeline.runtime.limit_rules import LimitRuleStore
from pipeline.settings import Settings
from pipeline.views.limits import LimitRulesView
from pipeline.views.scheduler_state import SchedulerStateView
from tests.support.limit_rules import RecordingWriter
from tests.support.runtime import process_env
from tests.unit.test_admin_api import CommandLog, ServiceTable

CATCH_UP_S = 30.0


@contextmanager
def admin_api_over_views(settings: Settings) -> Iterator[TestClient]:
    codec = WireCodec()
    state = SchedulerStateView(settings.cluster, settings.topic_names, codec, settings.state_dir)
    rules = LimitRulesView(settings.cluster, settings.topic_names, codec)
    state.start()
    rules.start()
    try:
        assert state.wait_caught_up(CATCH_UP_S) and rules.wait_caught_up(CATCH_UP_S)
        app = create_app(
            settings,
            invocations=state,
            services=ServiceTable(),
            commands=CommandLog(),
            limits=LimitRuleStore(rules, RecordingWriter()),
        )
        token = settings.admin_api_tokens[0].get_secret_value()
        yield TestClient(app, headers={"Authorization": f"Bearer {token}"})
    finally:
        state.stop()
        rules.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def admin_api_process(
    settings: Settings, log_dir: Path, *, admin: str, read: str | None = None
) -> Iterator[str]:
    """`pipeline admin-api` as its own process, configured like `settings`, with one
    admin token (and a read token); yields its base URL once it answers."""
    port = free_port()
    env = {
        **process_env(settings),
        "PIPELINE_ADMIN_API_PORT": str(port),
        "PIPELINE_ADMIN_API_TOKENS": json.dumps([admin]),
        "PIPELINE_ADMIN_API_READ_TOKENS": json.dumps([read] if read else []),
        "PIPELINE_STATE_DIR": str(log_dir / "admin-api-state"),
    }
    log_path = log_dir / "admin-api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "admin-api"], env=env, stdout=log, stderr=log
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the Admin API did not start within 60 s"
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            process.wait(30)
